#!/usr/bin/env python3
"""Evaluates a trainerd final.safetensors on the Fashion-MNIST test set without any trainerd code.

An independent implementation: parses the safetensors header itself (JSON + raw float32 little-endian), reads the
IDX files with gzip, and runs the MLP (Linear/ReLU, PyTorch nn.Sequential names: 0.weight [out, in], 0.bias, ...)
in float64 with NumPy. Prints `accuracy <fraction> correct <n> of <total>`.

usage: independent_eval.py WEIGHTS DATASET_DIR [relu|tanh|sigmoid]
"""
import gzip
import json
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    base = 8 + length
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{name}: dtype {info['dtype']}"
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[base + start:base + end], dtype="<f4").reshape(info["shape"])
    return tensors


def read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    (magic,) = struct.unpack(">I", raw[:4])
    rank = magic & 0xFF
    dims = struct.unpack(">" + "I" * rank, raw[4:4 + 4 * rank])
    return np.frombuffer(raw[4 + 4 * rank:], dtype=np.uint8).reshape(dims)


def main():
    weights, directory = sys.argv[1], sys.argv[2]
    activation = sys.argv[3] if len(sys.argv) > 3 else "relu"
    act = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z))}[activation]
    tensors = read_safetensors(weights)
    layers = sorted({int(k.split(".")[0]) for k in tensors})
    x = read_idx(f"{directory}/t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float64) / 255.0
    y = read_idx(f"{directory}/t10k-labels-idx1-ubyte.gz").astype(np.int64)
    for position, index in enumerate(layers):
        x = x @ tensors[f"{index}.weight"].astype(np.float64).T + tensors[f"{index}.bias"].astype(np.float64)
        if position < len(layers) - 1:
            x = act(x)
    correct = int((x.argmax(axis=1) == y).sum())
    print(f"accuracy {correct / len(y):.6f} correct {correct} of {len(y)}")


if __name__ == "__main__":
    main()
