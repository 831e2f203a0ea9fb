"""Runs exported artifacts the way a server would: without perceiver_keras
imported. Used by test_export.py in a subprocess.

    python export_runner.py FORMAT JOBS.json

JOBS.json: `[{"artifact": path, "inputs": .npz, "outputs": .npz}, ...]`;
each artifact runs on the first 1 and all 3 examples of its inputs, and
its outputs are saved as `<output name>/<batch size>`.
"""

import json
import sys

import numpy as np


def feed_name(name, inputs):
    """The input an exporter's input name stands for (tf2onnx writes
    "inputs" as "inputs_inputs"; inputs named like outputs are exported
    as "<name>_input")."""
    for candidate in (name, name.removesuffix("_input"),
                      name.removeprefix("inputs_")):
        if candidate in inputs:
            return candidate
    raise KeyError(f"no input for {name!r} in {sorted(inputs)}")


def run_tf_saved_model(path):
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    names = sorted(serve.structured_input_signature[1])
    return lambda x: {k: v.numpy() for k, v in serve(**{
        n: tf.constant(x[feed_name(n, x)]) for n in names}).items()}


def run_onnx(path):
    import onnxruntime

    session = onnxruntime.InferenceSession(path)
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    return lambda x: dict(zip(outputs, session.run(
        None, {n: x[feed_name(n, x)] for n in names})))


def run_openvino(path):
    import openvino

    # f32: OpenVINO's CPU plugin computes in bfloat16 by default on CPUs
    # with AMX / AVX512-BF16.
    compiled = openvino.Core().compile_model(
        path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    names = [i.get_any_name() for i in compiled.inputs]

    def run(x):
        result = compiled([x[feed_name(n, x)] for n in names])
        return {f"output_{i}": np.asarray(v)
                for i, v in enumerate(result.values())}
    return run


def run_litert(path):
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=path)
    runner = interpreter.get_signature_runner()
    names = interpreter.get_signature_list()["serving_default"]["inputs"]
    return lambda x: runner(**{n: x[feed_name(n, x)] for n in names})


RUNNERS = {"tf_saved_model": run_tf_saved_model, "onnx": run_onnx,
           "openvino": run_openvino, "litert": run_litert}


def main(format, jobs_file):
    with open(jobs_file) as f:
        jobs = json.load(f)
    for job in jobs:
        run = RUNNERS[format](job["artifact"])
        inputs = dict(np.load(job["inputs"]))
        saved = {}
        for batch in (1, 3):
            outputs = run({k: v[:batch] for k, v in inputs.items()})
            for name, value in outputs.items():
                saved[f"{name}/{batch}"] = np.asarray(value)
        np.savez(job["outputs"], **saved)
    # (TensorFlow's loader may import Keras itself; perceiver_keras, never.)
    if "perceiver_keras" in sys.modules:
        raise SystemExit("the runner imported perceiver_keras")


if __name__ == "__main__":
    main(*sys.argv[1:])
