"""The CUDA path (`QA_DEVICE=cuda`, fp16): its vectors against the CPU's, and its build speed.

    # here, on the CPU: fp32 vectors of the bundled model for the texts the check embeds
    .venv/bin/python -m bench.gpu reference --out R.npz [--passages 1000]
    # on a machine with a CUDA device
    python -m bench.gpu check --reference R.npz [--repeats 3]

`reference` embeds the default article's lines and the first 200 msmarco-5k passages with
the bundled model in fp32 torch on the CPU (the vectors every CPU index holds), and stores
them with the first ``--passages`` msmarco-5k passages, so that the check needs neither
the benchmark folder nor the CPU model.

`check` loads qa's embedder as `QA_DEVICE=cuda` does (`qa.assemble.embedder_from_settings`:
sentence-transformers on the GPU, weights cast to fp16), and

- compares its vectors with the reference: the cosine of each pair; it exits 1 when the
  smallest is below 0.999 or the embedder is not `torch-fp16` (the CPU fallback);
- times, in turn within each round, plain `SentenceTransformer.encode` of the passages
  (batch 32, on the GPU, fp32 and fp16) and qa's whole `build_index` of the same passages
  (reading, chunking, embedding chunks and sentences on the GPU, BM25, FAISS, writing);
  medians over the rounds, and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MSMARCO = ROOT.parent / "shared" / "benchmarks" / "msmarco-5k"
ARTICLE = ROOT / "corpus" / "nato-indo-pacific.txt"
MIN_COSINE = 0.999


def reference(out: Path, n: int) -> None:
    from qa.embedder import SentenceTransformerEmbedder

    lines = (MSMARCO / "corpus.jsonl").read_text("utf-8").splitlines()[:n]
    texts = [t for t in ARTICLE.read_text("utf-8").split("\n") if t.strip()]
    texts += [json.loads(line)["text"] for line in lines[:200]]
    cpu = SentenceTransformerEmbedder(backend="torch", device="cpu")
    vectors = cpu.embed(texts)
    np.savez(out, texts=np.array(texts), vectors=vectors, passages=np.array(lines))
    print(f"{len(texts)} reference vectors {vectors.shape} and {len(lines)} passages -> {out}")


def check(path: Path, repeats: int) -> int:
    import torch
    from sentence_transformers import SentenceTransformer

    from qa.assemble import embedder_from_settings, spec_from_settings
    from qa.builder import build_index
    from qa.embedder import resolve_model_path
    from qa.settings import Settings

    data = np.load(path)
    texts, expected = [str(t) for t in data["texts"]], data["vectors"]
    lines = [str(line) for line in data["passages"]]
    passages = [json.loads(line)["text"] for line in lines]
    settings = Settings(device="cuda")
    embedder: Any = embedder_from_settings(settings)
    got = embedder.embed(texts)
    cosine = (got * expected).sum(axis=1)
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    print(f"qa embedder on QA_DEVICE=cuda: {embedder.variant}")
    print(
        f"cosine to the CPU's fp32 vectors over {len(texts)} texts: mean {cosine.mean():.5f}, "
        f"min {cosine.min():.5f} (required >= {MIN_COSINE})"
    )
    failed = embedder.variant.split("+")[0] != "torch-fp16" or cosine.min() < MIN_COSINE

    spec = spec_from_settings(settings)
    model_path = resolve_model_path(settings.embedding_model)
    plain32 = SentenceTransformer(model_path, device="cuda").float()
    plain16 = SentenceTransformer(model_path, device="cuda").half()
    for m in (plain32, plain16):
        m.encode(passages[:64], batch_size=32)  # CUDA kernels loaded: not timed
    seconds: dict[str, list[float]] = {"plain fp32": [], "plain fp16": [], "qa": []}
    report: Any = None
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        (corpus / "msmarco.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
        for round_ in range(repeats):
            for name, model in (("plain fp32", plain32), ("plain fp16", plain16)):
                torch.cuda.synchronize()
                began = time.perf_counter()
                model.encode(passages, batch_size=32, normalize_embeddings=True)
                torch.cuda.synchronize()
                seconds[name].append(time.perf_counter() - began)
            began = time.perf_counter()
            report = build_index(corpus, Path(tmp) / f"index{round_}", embedder, spec, reuse=False)
            seconds["qa"].append(time.perf_counter() - began)
            print(
                f"round {round_ + 1}: "
                + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items()),
                file=sys.stderr,
                flush=True,
            )
    print(
        f"\n`python -m bench.gpu check --repeats {repeats}`: {len(passages):,} msmarco-5k "
        f"passages; qa built {report.chunks:,} chunks and {report.sentences:,} sentences\n"
    )
    print("| build | median s | each round, s | plain fp32 ÷ this |")
    print("|---|---|---|---|")
    for name, values in seconds.items():
        ratio = statistics.median(p / q for p, q in zip(seconds["plain fp32"], values, strict=True))
        label = (
            f"qa `build_index` ({embedder.variant})"
            if name == "qa"
            else f"{name} `SentenceTransformer.encode`, batch 32"
        )
        print(
            f"| {label} | {statistics.median(values):.2f} | "
            f"{' / '.join(f'{v:.2f}' for v in values)} | {ratio:.2f} |"
        )
    if failed:
        print("FAILED: the CUDA path is not fp16 on the GPU or its vectors are not the CPU's")
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("reference")
    ref.add_argument("--out", type=Path, required=True)
    ref.add_argument("--passages", type=int, default=1000)
    chk = sub.add_parser("check")
    chk.add_argument("--reference", type=Path, required=True)
    chk.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.command == "reference":
        reference(args.out, args.passages)
    else:
        sys.exit(check(args.reference, args.repeats))


if __name__ == "__main__":
    main()
