"""A faster CPU path for the embedding model: the same transformer exported to ONNX.

For models that are a plain transformer with mean pooling (and normalisation), such as
all-MiniLM-L6-v2, the transformer is exported once from the local weights with
``torch.onnx`` (no download) into the cache folder and run with onnxruntime. Vectors agree
with sentence-transformers to ~1e-7 (checked at export); a single question embeds about
4x faster on a 2-core CPU (docs/performance.md). Anything else stays on torch.

With ``precision="int8"`` the exported model is also quantized once, locally, with
onnxruntime's dynamic int8 quantization (weights int8 with one scale per output channel,
activations quantized per call, the first transformer layer left in fp32) into
``<cache>/onnx/<model fingerprint>-int8pc-l0-ort<version>.onnx``. Its vectors are not
equal to torch's (cosine ~0.995 on average on msmarco passages, where one scale per
tensor for every layer, the quantization before, gave 0.958); it is checked only for
being close (cosine >= 0.95 on a probe), and its effect on ranking is measured in
docs/quality.md and docs/performance.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

_PROBE = ["why is NATO engaging the Indo-Pacific", "A second, longer probe sentence to pad."]
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_INT8_MIN_COSINE = 0.95  # an int8 model further than this from torch on the probe is broken

Precision = Literal["fp32", "int8"]
# the name of int8's quantization in file names, variants and the index manifest:
# "int8pc-l0", per-channel weight scales with the first transformer layer left in fp32;
# the per-tensor "int8" of before is never reused
INT8_SCHEME = "int8pc-l0"
# MatMul nodes left in fp32: those of the first transformer layer, the most sensitive to
# quantization (msmarco passages, mean cosine to fp32 0.9955 against 0.9928 with every
# layer quantized, at 1.35x fp32's speed against 1.50x; docs/performance.md)
_KEEP_FP32 = re.compile(r"/layer\.0/")


def precision_label(precision: str) -> str:
    """``precision`` as recorded in the index manifest and the model's cache file name."""
    return INT8_SCHEME if precision == "int8" else precision


def supports(model: Any) -> bool:
    """A Transformer module, mean pooling, optionally Normalize: nothing else."""
    modules = [type(m).__name__ for m in model]
    if modules[:2] != ["Transformer", "Pooling"] or modules[2:] not in ([], ["Normalize"]):
        return False
    pooling = model[1]
    mode = getattr(pooling, "pooling_mode", None) or (
        "mean" if getattr(pooling, "pooling_mode_mean_tokens", False) else None
    )
    return mode == "mean"


def _fingerprint(model_path: Path) -> str:
    digest = hashlib.sha256(str(model_path.resolve()).encode())
    for f in sorted(model_path.rglob("*")):
        if f.is_file() and f.suffix in {".safetensors", ".bin", ".json"}:
            stat = f.stat()
            digest.update(f"{f.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:20]


def model_file(model_path: Path, cache_dir: Path, precision: Precision) -> Path:
    """Where :func:`load` keeps the ONNX file of the model at ``model_path`` for
    ``precision`` under ``cache_dir`` (it may not exist yet): ``onnx/<fingerprint>.onnx``,
    int8 ``onnx/<fingerprint>-int8pc-l0-ort<onnxruntime version>.onnx``."""
    import onnxruntime as ort

    fingerprint = _fingerprint(model_path)
    if precision == "int8":
        return cache_dir / "onnx" / f"{fingerprint}-{INT8_SCHEME}-ort{ort.__version__}.onnx"
    return cache_dir / "onnx" / f"{fingerprint}.onnx"


class OnnxEncoder:
    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        max_length: int,
        names: list[str],
        precision: Precision = "fp32",
    ) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.names = names
        self.precision = precision
        # the same model on one thread, for builds that run several batches at once
        # (QA_EMBED_STREAMS): at batch 1 two one-thread streams embed more per CPU second
        # than one stream on two threads (docs/performance.md). Opened on a build's first
        # batch, not at load: a serving process that never builds does not hold it (90 MB).
        self.stream_path: str | None = None
        self.stream_threads = 1
        self._stream_session: Any = None
        self._stream_failed = False
        self._stream_lock = threading.Lock()

    def stream_session(self) -> Any:
        """The session the streams share (None when streams are off, or when it cannot be
        opened: the main session then serves), opened on first use with
        ``stream_threads`` intra-op threads (its pool shared by the streams' calls)."""
        if self.stream_path is None or self._stream_failed:
            return None
        with self._stream_lock:
            if self._stream_session is None and not self._stream_failed:
                import onnxruntime as ort

                one = ort.SessionOptions()
                one.intra_op_num_threads = self.stream_threads
                one.log_severity_level = 3
                try:
                    self._stream_session = ort.InferenceSession(
                        self.stream_path, one, providers=["CPUExecutionProvider"]
                    )
                except Exception as exc:  # the cache file went away since load
                    log.warning("ONNX stream session unavailable (%s); one stream", exc)
                    self._stream_failed = True
            return self._stream_session

    def hidden(self, feed: dict[str, np.ndarray], stream: bool = False) -> np.ndarray:
        """Token embeddings, (batch, tokens, dim) float32, of already tokenized inputs
        (int64 arrays named as the model's inputs, padded to one length). ``stream``: on
        the streams' session (safe to call from several threads at once)."""
        session = (self.stream_session() if stream else None) or self.session
        out: np.ndarray = session.run(None, {k: feed[k] for k in self.names})[0]
        return out

    def encode(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
        )
        hidden = self.hidden({k: batch[k].astype(np.int64) for k in self.names})
        mask = batch["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: np.ndarray = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return out


def _export(model: Any, target: Path) -> list[str]:
    import torch

    transformer = model[0].auto_model.eval()
    probe = model.tokenizer(_PROBE, padding=True, return_tensors="pt")
    names = [k for k in _INPUTS if k in probe]

    class Wrapper(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any) -> Any:
            return self.inner(**dict(zip(names, args, strict=True))).last_hidden_state

    axes = {k: {0: "batch", 1: "tokens"} for k in [*names, "hidden"]}
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapper(transformer),
            tuple(probe[k] for k in names),
            str(tmp),
            input_names=names,
            output_names=["hidden"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    os.replace(tmp, target)
    return names


def _quantize(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of ``source`` (weights int8 with a scale per output
    channel, activations quantized at run time; the first transformer layer's MatMuls
    kept in fp32), written atomically to ``target``.

    Per channel rather than per tensor: the same speed, vectors at a mean cosine of 0.993
    to fp32 instead of 0.958; with the first layer in fp32, 0.9955 (msmarco passages;
    docs/performance.md)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    keep = [n.name for n in graph.node if n.op_type == "MatMul" and _KEEP_FP32.search(n.name)]

    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint on the root logger
    try:
        quantize_dynamic(
            str(source),
            str(tmp),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=keep,
            # the exported graph's shapes are not all inferred; its tensors are float32
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)
    os.replace(tmp, target)


def _make(model: Any, fp32: Path, target: Path, precision: Precision) -> list[str]:
    """Write the model file for ``precision`` (exporting the fp32 one first if needed)."""
    names = [k for k in _INPUTS if k in model.tokenizer(["x"])]
    if not fp32.exists():
        names = _export(model, fp32)
    if precision == "int8" and not target.exists():
        _quantize(fp32, target)
    return names


def load(
    model: Any,
    model_path: str,
    cache_dir: Path,
    threads: int,
    precision: Precision = "fp32",
    streams: int = 1,
) -> OnnxEncoder | None:
    """An ONNX twin of ``model`` at ``precision``, or None (unsupported model, missing
    package, or its vectors disagree with torch's) — the caller then stays on torch.
    ``streams`` > 1: batches run at once share a second session, opened on first use."""
    path = Path(model_path)
    if not path.is_dir() or not supports(model):
        return None
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    fp32 = model_file(path, cache_dir, "fp32")
    target = model_file(path, cache_dir, precision)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        names = _make(model, fp32, target, precision)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.log_severity_level = 3
        # no busy-waiting threads between calls: they would steal the CPU from the rest of
        # the request (BM25, fusion) and from other processes
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
        except Exception:  # a damaged cache file: make it (and its source) again, once
            target.unlink(missing_ok=True)
            fp32.unlink(missing_ok=True)
            names = _make(model, fp32, target, precision)
            session = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
        encoder = OnnxEncoder(session, model.tokenizer, int(model.max_seq_length), names, precision)
        if streams > 1:
            encoder.stream_path = str(target)
            # one session serves the streams: each Run works on its calling thread plus
            # the session's shared pool of (intra-op threads - 1), so the streams use
            # ``threads`` cores in all: on 2 cores, 2 streams of one thread each (measured
            # fastest there); on 16, 2 callers and a pool of 14
            encoder.stream_threads = max(1, threads - streams + 1)
        expected = model.encode(_PROBE, normalize_embeddings=True, convert_to_numpy=True)
        got = encoder.encode(_PROBE)
        if precision == "int8":
            cosine = float((got * expected).sum(axis=1).min())
            if cosine < _INT8_MIN_COSINE:
                log.warning(
                    "int8 ONNX vectors are at cosine %.3f to torch; staying on torch", cosine
                )
                return None
            return encoder
        gap = float(np.abs(got - expected).max())
        if gap > 1e-4:
            log.warning("ONNX vectors differ from torch by %.2g; staying on torch", gap)
            return None
        return encoder
    except Exception as exc:  # any export/runtime problem: torch still works
        log.warning("ONNX path unavailable (%s: %s); staying on torch", type(exc).__name__, exc)
        return None
