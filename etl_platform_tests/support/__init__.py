"""What several tests share: local servers, platform runs, stacks, scanners (no tests here)."""
