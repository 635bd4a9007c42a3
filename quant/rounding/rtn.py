"""Round-to-nearest: each layer on its own, one at a time (peak memory: one weight and its outputs)."""
from __future__ import annotations


class RoundToNearest:
    name = "rtn"

    def quantize(self, jobs, *, backend, device="cpu"):
        for job in jobs:
            w = job.load()
            if str(device) != "cpu":
                w = w.to(device)
            raw = job.fmt.quantize(w, backend=backend, name=job.name)
            del w
            yield job, raw
            del raw
