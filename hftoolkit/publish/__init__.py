"""`hft push`'s building blocks: safety checks, sanitizing, run inspection, uploads, merge, Hub commit, verify, card."""
