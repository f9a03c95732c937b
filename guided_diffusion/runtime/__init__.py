"""Process-level plumbing: distributed launch, files written atomically, logging set-up, the CPU allocator."""
