"""Recovery training: the loop, several processes (DDP/FSDP), sharded checkpoints."""
