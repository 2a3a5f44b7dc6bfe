"""Read-only facts about an IRModule: multiply-accumulate counts, peak live memory, lifetimes."""
