"""The foundation model (load, save, verify), the constraint, the layers it touches."""
