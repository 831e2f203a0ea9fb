"""The machine's practical matmul limit, in float32 and bfloat16.

Median rate of timed n x n products in torch, NumPy (float32 only) and
`jax.jit` (bfloat16 inputs with float32 accumulation, what the project's
PerceiverDense asks XLA for, then the cast back; plain bfloat16 output
too, for comparison). The best rate per dtype is the limit a row's
GFLOP/s are compared with.
"""

import os

from throughput.measure import configure_torch
from throughput.measure import time_calls

DTYPES = ("float32", "bfloat16")


def matmul_calls(n, dtype, torch):
    """{library: no-argument n x n product} for one dtype."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    calls = {}
    ta = torch.from_numpy(a).to(getattr(torch, dtype))
    tb = torch.from_numpy(b).to(getattr(torch, dtype))
    calls["torch"] = lambda: ta @ tb
    if dtype == "float32":
        calls["numpy"] = lambda: a @ b
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return calls
    ja, jb = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    if dtype == "float32":
        product = jax.jit(jnp.matmul)
        calls["jax"] = lambda: product(ja, jb).block_until_ready()
    else:
        accumulate = jax.jit(lambda x, y: jnp.matmul(
            x, y, preferred_element_type=jnp.float32).astype(x.dtype))
        plain = jax.jit(jnp.matmul)
        calls["jax (float32 accumulation)"] = (
            lambda: accumulate(ja, jb).block_until_ready())
        calls["jax (bfloat16 output)"] = (
            lambda: plain(ja, jb).block_until_ready())
    return calls


def machine_child(job):
    """{"matmul_gflops": {dtype: {"library n": rate}}, "limit_gflops":
    {dtype: best rate}, "load": 1-minute load average}."""
    torch = configure_torch(job["threads"])
    # Only the dtypes the run compares: on a CPU without bfloat16
    # instructions the emulated bfloat16 products alone take minutes.
    dtypes = [d for d in DTYPES if d in job["dtypes"]]
    rates = {dtype: {} for dtype in dtypes}
    for n, repeats in job["matmul_sizes"].items():
        n = int(n)
        for dtype in dtypes:
            for name, call in matmul_calls(n, dtype, torch).items():
                _, record = time_calls(call, repeats, 1e9)
                rates[dtype][f"{name} {n}"] = (
                    2 * n**3 / record["median_s"] / 1e9)
    return {"matmul_gflops": rates,
            "limit_gflops": {dtype: max(r.values())
                             for dtype, r in rates.items() if r},
            "load": os.getloadavg()[0]}
