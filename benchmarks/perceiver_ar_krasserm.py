"""Perceiver AR against krasserm's PyTorch implementation, same weights.

krasserm's package (`perceiver-io` 0.11.0) runs in its own virtual
environment (see benchmarks/README.md, "Perceiver AR vs krasserm"); this
script starts it as a subprocess (`--role krasserm`), which builds a random
krasserm model with a fixed seed, saves it with `save_pretrained`, and
measures it. Our side converts that directory with the project's converter
and measures each Keras backend in its own process on the same inputs:

- forward throughput (context tokens per second) at context 1k / 4k / 16k,
  batch 1, the last `NUM_LATENTS` positions as latents;
- greedy generation (tokens per second) of `NEW_TOKENS` after a
  `PROMPT`-token prompt, with the KV cache and without it (each token a
  full forward over the sequence);
- peak resident memory added by the forward pass, against context length
  (the processes run the contexts in increasing order, so the high-water
  mark after each context is that context's peak);
- whether greedy generation equals krasserm's token for token.

Usage:
    python benchmarks/perceiver_ar_krasserm.py \
        --krasserm-python /work/venvs/krasserm/bin/python
Writes benchmarks/results/perceiver_ar_krasserm.{json,md}.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

CONFIG = dict(vocab_size=262, max_seq_len=16384, max_latents=256,
              num_channels=256, num_heads=4, num_self_attention_layers=4,
              num_self_attention_rotary_layers=1, cross_attention_dropout=0.0)
CONTEXTS = (1024, 4096, 16384)
NUM_LATENTS = 256
PROMPT, NEW_TOKENS = 1024, 32
REPEATS = 3
BACKENDS = ("jax", "torch", "tensorflow")


def inputs(length, seed=0):
    return np.random.default_rng(seed).integers(
        6, CONFIG["vocab_size"], (1, length)).astype("int32")


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn):
    """Median seconds of `REPEATS` calls after one warm-up (compilation)."""
    fn()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(forward, generate):
    """The shared measurement loop of both sides: `forward(ids)` and
    `generate(prompt, use_cache) -> token ids [1, PROMPT + NEW_TOKENS]`."""
    result = {"forward_tokens_per_s": {}, "forward_peak_mib": {}}
    baseline = rss_mib()
    for length in CONTEXTS:
        ids = inputs(length)
        seconds = timed(lambda: forward(ids))
        result["forward_tokens_per_s"][length] = length / seconds
        result["forward_peak_mib"][length] = peak_mib() - baseline
    prompt = inputs(PROMPT, seed=1)
    for use_cache in (True, False):
        key = "cache" if use_cache else "no_cache"
        seconds = timed(lambda: generate(prompt, use_cache))
        result[f"generate_{key}_tokens_per_s"] = NEW_TOKENS / seconds
    result["generated"] = np.asarray(generate(prompt, True)).tolist()
    return result


def run_krasserm(directory):
    import torch
    from perceiver.model.text.clm import (
        CausalLanguageModelConfig, PerceiverCausalLanguageModel,
        PerceiverCausalLanguageModelConfig)

    torch.manual_seed(0)
    config = PerceiverCausalLanguageModelConfig(
        CausalLanguageModelConfig(**CONFIG), is_decoder=True)
    model = PerceiverCausalLanguageModel(config).eval()
    model.save_pretrained(directory)

    @torch.no_grad()
    def forward(ids):
        ids = torch.from_numpy(ids).long()
        return model.backend_model(ids, prefix_len=ids.shape[1] - NUM_LATENTS)

    @torch.no_grad()
    def generate(prompt, use_cache):
        prompt = torch.from_numpy(prompt).long()
        return model.generate(
            input_ids=prompt, attention_mask=torch.ones_like(prompt),
            num_latents=1, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
            do_sample=False, use_cache=use_cache, pad_token_id=0).numpy()

    return {"torch_threads": torch.get_num_threads(),
            **measure(forward, generate)}


def run_ours(directory):
    import keras

    from perceiver_keras.conversion.perceiver_ar import convert_krasserm

    lm = convert_krasserm(directory)
    lm.compile(sampler="greedy")

    def forward(ids):
        lm.num_latents = NUM_LATENTS
        return lm.predict_on_batch(
            {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)})

    def generate(prompt, use_cache):
        length = PROMPT + NEW_TOKENS
        if use_cache:
            ids = np.pad(prompt, ((0, 0), (0, NEW_TOKENS)))
            mask = np.arange(length)[None] < PROMPT
            out = lm.generate({"token_ids": ids, "padding_mask": mask},
                              stop_token_ids=None, num_latents=1)
            return out["token_ids"]
        # Without the cache: every token is a full forward over a fixed-
        # shape, left-padded buffer (one compiled shape), one latent.
        ids = np.pad(prompt, ((0, 0), (NEW_TOKENS, 0)))
        mask = np.arange(length)[None] >= NEW_TOKENS
        lm.num_latents = 1
        for _ in range(NEW_TOKENS):
            logits = lm.predict_on_batch({"token_ids": ids,
                                          "padding_mask": mask})
            token = np.asarray(logits)[:, -1].argmax(-1).astype("int32")
            ids = np.concatenate([ids[:, 1:], token[:, None]], 1)
            mask = np.concatenate([mask[:, 1:], np.ones((1, 1), bool)], 1)
        return ids

    return {"keras": keras.__version__, **measure(forward, generate)}


def subprocess_json(command, env=None):
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(results):
    names = ["krasserm (PyTorch)"] + [f"ours, {b}" for b in results["ours"]]
    rows = [results["krasserm"]] + list(results["ours"].values())
    head = "| | " + " | ".join(names) + " |\n" + "|---" * (len(names) + 1) \
        + "|\n"

    def line(label, values, fmt):
        return f"| {label} | " + " | ".join(fmt.format(v) for v in values) \
            + " |\n"

    text = head
    for length in CONTEXTS:
        text += line(f"forward, context {length} (tokens/s)",
                     [r["forward_tokens_per_s"][str(length)] for r in rows],
                     "{:,.0f}")
    for key, label in (("cache", "with cache"), ("no_cache", "without cache")):
        text += line(f"generation {label} (tokens/s)",
                     [r[f"generate_{key}_tokens_per_s"] for r in rows],
                     "{:.1f}")
    for length in CONTEXTS:
        text += line(f"forward peak memory, context {length} (MiB)",
                     [r["forward_peak_mib"][str(length)] for r in rows],
                     "{:,.0f}")
    text += line("greedy generation equals krasserm's",
                 [r["generated"] == rows[0]["generated"] for r in rows],
                 "{}")
    return text


def main():
    global CONTEXTS, NEW_TOKENS
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=("driver", "krasserm", "ours"),
                        default="driver")
    parser.add_argument("--directory")
    parser.add_argument("--krasserm-python",
                        default="/work/venvs/krasserm/bin/python")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--contexts", default=",".join(map(str, CONTEXTS)),
                        help="a quick check: --contexts 512 --new-tokens 4")
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    parser.add_argument("--output", default=os.path.join(
        os.path.dirname(__file__), "results", "perceiver_ar_krasserm"))
    args = parser.parse_args()
    CONTEXTS = tuple(int(c) for c in args.contexts.split(","))
    NEW_TOKENS = args.new_tokens
    sizes = ["--contexts", args.contexts, "--new-tokens", str(NEW_TOKENS)]
    if args.role == "krasserm":
        print(json.dumps(run_krasserm(args.directory)))
        return
    if args.role == "ours":
        print(json.dumps(run_ours(args.directory)))
        return

    with tempfile.TemporaryDirectory() as directory:
        script = os.path.abspath(__file__)
        results = {"config": CONFIG, "num_latents": NUM_LATENTS,
                   "prompt": PROMPT, "new_tokens": NEW_TOKENS,
                   "krasserm": subprocess_json(
                       [args.krasserm_python, script, "--role", "krasserm",
                        "--directory", directory, *sizes]),
                   "ours": {}}
        for backend in args.backends.split(","):
            env = {**os.environ, "KERAS_BACKEND": backend}
            results["ours"][backend] = subprocess_json(
                [sys.executable, script, "--role", "ours",
                 "--directory", directory, *sizes], env)
            write(results, args.output)  # what exists, after each backend
    print(markdown(json.loads(json.dumps(results))))


def write(results, output):
    # JSON keys: the context lengths become strings, on both sides alike.
    results = json.loads(json.dumps(results))
    results["written"] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg()[0],
    }
    with open(output + ".json", "w") as f:
        json.dump(results, f, indent=1)
    header = (
        f"Written by `python benchmarks/perceiver_ar_krasserm.py` on "
        f"{results['written']['date']} ({results['written']['machine']}; "
        f"krasserm's torch with {results['krasserm']['torch_threads']} "
        f"threads; 1-minute load average at the end "
        f"{results['written']['load_average']:.1f}). Model and "
        f"measurements: the script's docstring.\n\n")
    with open(output + ".md", "w") as f:
        f.write(header + markdown(results))

if __name__ == "__main__":
    main()
