"""Tests of the embedding cache and its precompute step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandScaleCropd, Resized

from scsam_monai.data.embedding_cache import EmbeddingCache, transform_fingerprint
from scsam_monai.data.embedding_dataset import cached_embedding_dataset, precompute_embeddings
from scsam_monai.engines.batch import EmbeddingBatch
from tests.helpers import tiny_encoder, train_preprocessing


def _preprocessing(normalization: str = "per_image") -> Compose:
    """train.yaml's preprocessing with the given ``image_normalization``."""
    return train_preprocessing({"image_normalization": normalization})


def _augmentation(canvas: int = 256, scale: float = 0.5) -> Compose:
    return Compose(
        [
            RandScaleCropd(keys=["image", "label"], roi_scale=scale, max_roi_scale=1.0, random_size=True),
            Resized(keys=["image", "label"], spatial_size=canvas, size_mode="longest", mode=["bilinear", "nearest"]),
        ]
    )


class CountingEncoder(torch.nn.Module):
    """Wraps an encoder and counts the images it encodes."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.inner = encoder
        self.images = 0

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, x):
        self.images += x.shape[0]
        return self.inner(x)


@pytest.fixture(scope="module")
def training_items(synthetic_dataset) -> list[dict]:
    """The training items (image and label paths) of a synthetic data set of 2 training slices of 96 x 96."""
    from monai.data import load_decathlon_datalist

    root = synthetic_dataset(num_train=2, num_val=1, num_test=0, size=96, seed=3)
    return load_decathlon_datalist(str(root / "datalist.json"), True, "training")


@pytest.fixture(scope="module")
def encoders():
    return tiny_encoder("sam"), tiny_encoder("mae")


def test_second_run_does_no_encoder_work_and_returns_same_records(tmp_path, training_items, encoders):
    sam, mae = CountingEncoder(encoders[0]), CountingEncoder(encoders[1])
    kwargs = dict(
        cache_dir=tmp_path / "cache",
        preprocessing=_preprocessing(),
        augmentation=_augmentation(),
        views_per_image=3,
        sam_encoder=sam,
        mae_encoder=mae,
        progress=False,
    )
    first = precompute_embeddings(training_items, **kwargs)
    assert len(first) == 2 * 3
    assert sam.images == mae.images == 6
    second = precompute_embeddings(training_items, **kwargs)
    assert sam.images == mae.images == 6  # nothing recomputed
    assert [r["sam"] for r in first] == [r["sam"] for r in second]
    for record in first:
        emb = np.load(record["sam"], mmap_mode="r")
        assert emb.dtype == np.float16 and emb.shape == (256, 64, 64)
        assert np.load(record["mae"], mmap_mode="r").shape == (512, 64, 64)
    # stored embedding equals a fresh encoder call on the un-augmented view (within fp16 precision)
    image = _preprocessing()(dict(training_items[0]))["image"][None]
    fresh = encoders[0](image)[0].numpy()
    np.testing.assert_allclose(np.load(first[0]["sam"]).astype(np.float32), fresh, rtol=1e-2, atol=1e-2)


def test_augmented_views_are_deterministic_distinct_and_label_aligned(tmp_path, training_items, encoders):
    records = precompute_embeddings(
        training_items[:1],
        cache_dir=tmp_path / "cache",
        preprocessing=_preprocessing(),
        augmentation=_augmentation(),
        views_per_image=3,
        sam_encoder=encoders[0],
        progress=False,
    )
    labels = [np.load(r["label"]) for r in records]
    assert labels[0].shape == (1, 96, 96)  # view 0: the original image
    assert labels[1].shape[-2:] != (96, 96) or not np.array_equal(labels[1], labels[0])
    assert not np.array_equal(np.load(records[1]["sam"]), np.load(records[2]["sam"]))
    again = precompute_embeddings(
        training_items[:1],
        cache_dir=tmp_path / "cache2",
        preprocessing=_preprocessing(),
        augmentation=_augmentation(),
        views_per_image=3,
        sam_encoder=encoders[0],
        progress=False,
    )
    for a, b in zip(records, again, strict=True):
        np.testing.assert_array_equal(np.load(a["label"]), np.load(b["label"]))
        np.testing.assert_array_equal(np.load(a["sam"]), np.load(b["sam"]))


def test_other_encoder_or_preprocessing_never_reuses_entries(tmp_path, training_items, encoders):
    common = dict(cache_dir=tmp_path / "cache", views_per_image=1, progress=False)
    a = precompute_embeddings(training_items[:1], preprocessing=_preprocessing(), sam_encoder=encoders[0], **common)
    other_seed = tiny_encoder("sam", seed=1)
    b = precompute_embeddings(training_items[:1], preprocessing=_preprocessing(), sam_encoder=other_seed, **common)
    prepared = _preprocessing("prepared")
    c = precompute_embeddings(training_items[:1], preprocessing=prepared, sam_encoder=encoders[0], **common)
    assert len({a[0]["sam"], b[0]["sam"], c[0]["sam"]}) == 3
    aug = _augmentation()
    first = transform_fingerprint(aug)
    aug(_preprocessing()(dict(training_items[0])))  # MONAI transforms keep per-call state; the fingerprint must not
    assert transform_fingerprint(aug) == first == transform_fingerprint(_augmentation())
    assert transform_fingerprint(_augmentation(scale=0.7)) != first
    assert transform_fingerprint(_augmentation(canvas=128)) != first


def test_truncated_entry_is_recomputed(tmp_path, training_items, encoders):
    sam = CountingEncoder(encoders[0])
    kwargs = dict(cache_dir=tmp_path / "cache", preprocessing=_preprocessing(), sam_encoder=sam, progress=False)
    records = precompute_embeddings(training_items[:1], **kwargs)
    path = records[0]["sam"]
    with open(path, "r+b") as handle:
        handle.truncate(100)
    assert not EmbeddingCache.is_valid(__import__("pathlib").Path(path), (256, 64, 64))
    precompute_embeddings(training_items[:1], **kwargs)
    assert sam.images == 2
    assert np.load(path).shape == (256, 64, 64)


def test_no_temporary_files_left_behind(tmp_path, training_items, encoders):
    precompute_embeddings(
        training_items[:1],
        cache_dir=tmp_path / "cache",
        preprocessing=_preprocessing(),
        sam_encoder=encoders[0],
        progress=False,
    )
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]


def test_dataset_serves_float_embeddings_and_label_on_mask_grid(tmp_path, training_items, encoders):
    records = precompute_embeddings(
        training_items[:1],
        cache_dir=tmp_path / "cache",
        preprocessing=_preprocessing(),
        sam_encoder=encoders[0],
        mae_encoder=encoders[1],
        progress=False,
    )
    item = cached_embedding_dataset(records, mask_grid=256, embedding_dtype=torch.float16)[0]
    # float16 as cached (half the bytes through workers and collation); EmbeddingBatch makes float32 on device
    assert item["sam"].dtype == torch.float16 and item["sam"].shape == (256, 64, 64)
    stored = np.load(records[0]["sam"])
    torch.testing.assert_close(item["sam"], torch.from_numpy(stored), rtol=0, atol=0)
    sam, label, (mae,), _ = EmbeddingBatch()({k: item[k][None] for k in ("sam", "mae", "label")}, "cpu")
    assert sam.dtype == mae.dtype == torch.float32 and label.dtype == torch.long
    torch.testing.assert_close(sam[0], torch.from_numpy(stored).float(), rtol=0, atol=0)
    assert item["label"].shape == (1, 256, 256) and item["label"].dtype == torch.long
    assert cached_embedding_dataset(records, mask_grid=256)[0]["sam"].dtype == torch.float32  # the default
    full = cached_embedding_dataset(records, mask_grid=None)[0]
    assert full["label"].shape == (1, 96, 96)
    assert item["input_size"].tolist() == [256, 256] and item["original_size"].tolist() == [96, 96]


def test_bad_arguments(tmp_path, training_items, encoders):
    with pytest.raises(ValueError, match="encoder"):
        precompute_embeddings(training_items, cache_dir=tmp_path, preprocessing=_preprocessing())
    with pytest.raises(ValueError, match="empty"):
        precompute_embeddings([], cache_dir=tmp_path, preprocessing=_preprocessing(), sam_encoder=encoders[0])
    with pytest.raises(ValueError, match="augmentation"):
        precompute_embeddings(
            training_items,
            cache_dir=tmp_path,
            preprocessing=_preprocessing(),
            sam_encoder=encoders[0],
            views_per_image=2,
        )
