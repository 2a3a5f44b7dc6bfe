"""TIR (tensor-level) passes: scheduling for small scratch, the unpacked C calling convention, workspaces."""
