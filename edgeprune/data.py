"""Samples users bring (calibration, fine-tuning, validation), read from documented formats into tensors.

Formats: `.npz` / `.pt` / `.safetensors` with `inputs` (or `x`, `input_ids`, `pixel_values`) and optional
`labels` (or `y`); an image folder (class sub-folders give labels) resized to the model's input shape; a text
file for language models (needs a tokenizer in the model directory); `digits` (or its fixed `digits:train` /
`digits:test` split), scikit-learn's bundled 8×8 handwritten digits upscaled to the model's input shape (the
built-in example, no network); `digits-shifted` (same splits): those digits as another camera sees them (lower
contrast, blur, sensor noise), the built-in shifted domain of test-time adaptation (pruning/ttmpd.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import BadInputError

INPUT_KEYS = ("inputs", "x", "input_ids", "pixel_values", "images")
LABEL_KEYS = ("labels", "y", "targets")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm"}
SHIFTED_DIGITS = ("digits-shifted", "digits-shifted:train", "digits-shifted:test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Samples:
    """Inputs (N, ...) and optional integer labels (N,), plus where they came from."""

    inputs: object  # torch.Tensor
    labels: object | None
    source: str
    preprocessing: dict

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def batches(self, size: int, limit: int | None = None):
        """(inputs, labels or None) mini-batches in order, at most `limit` samples in all."""
        n = len(self) if limit is None else min(len(self), limit)
        for start in range(0, n, size):
            end = min(n, start + size)
            yield self.inputs[start:end], None if self.labels is None else self.labels[start:end]

    def take(self, n: int) -> "Samples":
        return Samples(self.inputs[:n], None if self.labels is None else self.labels[:n], self.source,
                       self.preprocessing)


def load_samples(path: str | Path, input_shape: tuple, family: str = "vision", tokenizer_dir: str | None = None,
                 seq_len: int | None = None) -> Samples:
    """Read samples for a model with `input_shape` (batch dim first); one clear error for unusable data."""
    import torch

    text = str(path)
    if text in ("digits", "digits:train", "digits:test"):
        return digits(input_shape, text.partition(":")[2] or "all")
    if text in SHIFTED_DIGITS:
        return shifted_digits(input_shape, text.partition(":")[2] or "all")
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"data {path} does not exist",
                            "give a .npz/.pt/.safetensors file, an image folder, a text file, or 'digits'")
    if path.is_dir():
        samples = _image_folder(path, input_shape)
    elif path.suffix == ".txt":
        samples = _text(path, tokenizer_dir, seq_len or int(input_shape[-1]))
    else:
        samples = _tensor_file(path)
    want = tuple(input_shape[1:])
    got = tuple(samples.inputs.shape[1:])
    if family == "vision" and got != want:
        raise BadInputError(f"data {path} has samples of shape {'x'.join(map(str, got))}, the model takes "
                            f"{'x'.join(map(str, want))}", "resize the data or pass --input-shape to match")
    if family != "vision" and samples.inputs.dtype not in (torch.int64, torch.int32):
        raise BadInputError(f"data {path} holds {samples.inputs.dtype} values; a language model needs token ids",
                            "store integer input_ids, or give a text file with a tokenizer in the model directory")
    if samples.labels is not None and len(samples.labels) != len(samples):
        raise BadInputError(f"data {path} has {len(samples)} inputs but {len(samples.labels)} labels",
                            "store one label per sample")
    return samples


def _tensor_file(path: Path) -> Samples:
    import numpy as np
    import torch

    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: torch.from_numpy(archive[k]) for k in archive.files}
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            arrays = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            arrays = loaded if isinstance(loaded, dict) else {"inputs": loaded}
    except Exception as err:
        raise BadInputError(f"cannot read data {path}: {str(err).splitlines()[0][:160]}",
                            "give a .npz, .pt (weights_only) or .safetensors file with an 'inputs' array") from None
    inputs = next((arrays[k] for k in INPUT_KEYS if k in arrays), None)
    if inputs is None:
        raise BadInputError(f"data {path} has no array named {' / '.join(INPUT_KEYS)} (it has "
                            f"{', '.join(sorted(arrays)) or 'nothing'})", "name the input array 'inputs'")
    labels = next((arrays[k] for k in LABEL_KEYS if k in arrays), None)
    if inputs.is_floating_point():
        inputs = inputs.float()
    return Samples(inputs, None if labels is None else labels.long(), str(path), {"kind": "tensors"})


def _image_folder(path: Path, input_shape: tuple) -> Samples:
    import numpy as np
    import torch
    from PIL import Image

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadInputError(f"image folder {path} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})",
                            "put images in it, in one sub-folder per class for labels")
    classes = sorted({p.parent.name for p in files if p.parent != path})
    channels, height, width = (int(d) for d in input_shape[1:4])
    mean = torch.tensor(IMAGENET_MEAN if channels == 3 else (0.5,) * channels).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD if channels == 3 else (0.5,) * channels).view(-1, 1, 1)
    tensors, labels = [], []
    for file in files:
        try:
            image = Image.open(file).convert("RGB" if channels == 3 else "L").resize((width, height),
                                                                                     Image.BILINEAR)
        except Exception as err:
            raise BadInputError(f"cannot read image {file}: {err}", "remove or replace the file") from None
        array = np.asarray(image, dtype=np.float32) / 255.0
        t = torch.from_numpy(array).reshape(height, width, channels).permute(2, 0, 1)
        tensors.append((t - mean) / std)
        if classes:
            labels.append(classes.index(file.parent.name) if file.parent != path else -1)
    prep = {"kind": "image", "resize": [height, width], "mean": mean.flatten().tolist(), "std": std.flatten().tolist(),
            "classes": classes}
    return Samples(torch.stack(tensors), torch.tensor(labels) if classes else None, str(path), prep)


def _text(path: Path, tokenizer_dir: str | None, seq_len: int) -> Samples:

    if tokenizer_dir is None:
        raise BadInputError(f"text data {path} needs a tokenizer", "use a Hugging Face model directory that has one")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except Exception:
        raise BadInputError(f"the model directory {tokenizer_dir} has no tokenizer to read {path}",
                            "save the tokenizer beside the model, or give token ids in a .npz/.pt file") from None
    ids = tokenizer(path.read_text(errors="replace"), return_tensors="pt")["input_ids"][0]
    n = len(ids) // seq_len
    if n == 0:
        raise BadInputError(f"text data {path} has {len(ids)} tokens, fewer than one sequence of {seq_len}",
                            "give more text or a smaller --seq-len")
    return Samples(ids[: n * seq_len].reshape(n, seq_len), None, str(path), {"kind": "text", "seq_len": seq_len})


def digits(input_shape: tuple, split: str = "all", seed: int = 0) -> Samples:
    """scikit-learn's bundled digits (1797 images of 8×8, 10 classes), upscaled to `input_shape`.

    `split` "train" / "test" is a fixed, seeded 75 / 25 split; "all" keeps every sample.
    """
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.75 * len(y))
    index = {"train": order[:cut], "test": order[cut:], "all": torch.arange(len(y))}[split]
    channels, height, width = (int(d) for d in input_shape[1:4])
    x = F.interpolate(x[index], size=(height, width), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).repeat(1, channels, 1, 1)
    prep = {"kind": "digits", "resize": [height, width], "mean": [0.5] * channels, "std": [0.5] * channels,
            "split": split, "seed": seed}
    return Samples(x.contiguous(), y[index], f"digits:{split}", prep)


def shift_domain(inputs, seed: int = 0, contrast: float = 0.6, blur: bool = True, noise: float = 0.25):
    """`inputs` as another camera would give them: contrast scaled, a 3×3 binomial blur, Gaussian sensor noise.

    A shift BatchNorm statistics notice (the mean and spread of every feature move) while labels survive: the
    setting of test-time adaptation. The noise is seeded (`1000 + seed`), so a split is reproducible.
    """
    import torch
    import torch.nn.functional as F

    x = inputs * contrast
    if blur:
        kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
        x = F.conv2d(x, kernel.expand(x.shape[1], 1, 3, 3).contiguous(), padding=1, groups=x.shape[1])
    if noise:
        x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(1000 + seed))
    return x.contiguous()


def shifted_digits(input_shape: tuple, split: str = "all", seed: int = 0) -> Samples:
    """`digits(input_shape, split, seed)` through `shift_domain` (contrast 0.6, blur, noise σ 0.25); labelled."""
    clean = digits(input_shape, split, seed)
    prep = dict(clean.preprocessing, shift={"contrast": 0.6, "blur": "3x3 binomial", "noise": 0.25,
                                            "noise_seed": 1000 + seed})
    return Samples(shift_domain(clean.inputs, seed), clean.labels, f"digits-shifted:{split}", prep)
