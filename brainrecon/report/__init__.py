"""Reports a person can read: one self-contained HTML page per run, with PNG figures."""
