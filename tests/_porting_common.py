"""Shared by the official-layout porting tests: renaming a state dict through a regex table."""

import re


def rename(sd: dict, table) -> dict:
    """Each key renamed by the first (pattern, replacement) of `table` that changes it; a key none matches fails."""
    out = {}
    for k, v in sd.items():
        for pat, rep in table:
            new = re.sub(pat, rep, k)
            if new != k:
                break
        else:
            raise AssertionError(f'no HF name for {k}')
        out[new] = v
    return out
