"""Many runs: sweeps, compare, run lookup, the real-shape rehearsal."""
