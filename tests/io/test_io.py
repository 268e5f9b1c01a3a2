"""Tests of the volume readers (``scsam_monai.io.readers``): ``open_volume`` and ``read_image_2d``, on files the
tests write."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from scsam_monai.io.readers import DataPreparationError, natural_key, open_volume, read_image_2d

RNG = np.random.default_rng(0)
VOLUME = RNG.integers(0, 60000, (5, 12, 16)).astype(np.uint16)  # (Z, Y, X), non-square planes


def _check_volume(volume, expected=VOLUME):
    assert volume.shape == expected.shape
    assert volume.dtype == expected.dtype
    np.testing.assert_array_equal(volume.read_slice(3), expected[3])
    np.testing.assert_array_equal(volume.read_slice(7, axis=1), expected[:, 7, :])
    np.testing.assert_array_equal(volume.read_slice(2, axis=2), expected[:, :, 2])
    np.testing.assert_array_equal(volume.read(), expected)


# ---- TIFF ---------------------------------------------------------------------------------------------------


def test_uncompressed_tiff_stack_is_memory_mapped_and_read_along_every_axis(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, VOLUME)
    with open_volume(path) as volume:
        assert volume.format == "tiff" and volume.lazy
        _check_volume(volume)


def test_compressed_tiff_stack_reads_one_page_per_slice(tmp_path, monkeypatch):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, VOLUME, compression="zlib")
    calls = []
    original = tifffile.TiffPage.asarray
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    with open_volume(path) as volume:
        assert volume.lazy
        np.testing.assert_array_equal(volume.read_slice(4), VOLUME[4])
    assert len(calls) == 1  # one page decoded, not the whole stack


def test_ome_tiff_keeps_physical_voxel_size(tmp_path):
    path = tmp_path / "cell.ome.tif"
    meta = {"axes": "ZYX", "PhysicalSizeZ": 3.4, "PhysicalSizeY": 4.0, "PhysicalSizeX": 4.0}
    meta.update(PhysicalSizeXUnit="nm", PhysicalSizeYUnit="nm", PhysicalSizeZUnit="nm")
    tifffile.imwrite(path, VOLUME, ome=True, metadata=meta)
    with open_volume(path) as volume:
        _check_volume(volume)
        assert volume.spacing == pytest.approx((3.4, 4.0, 4.0))
        assert volume.unit == "nm"


def test_imagej_tiff_keeps_spacing_and_unit(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        VOLUME,
        imagej=True,
        resolution=(1 / 0.0046, 1 / 0.0046),
        metadata={"spacing": 0.05, "unit": "um", "axes": "ZYX"},
    )
    with open_volume(path) as volume:
        _check_volume(volume)
        assert volume.spacing == pytest.approx((0.05, 0.0046, 0.0046), rel=1e-4)
        assert volume.unit == "µm"


def test_rgb_tiff_is_rejected_as_multichannel(tmp_path):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, RNG.integers(0, 255, (8, 9, 3)).astype(np.uint8), photometric="rgb")
    with pytest.raises(DataPreparationError, match="rgb.tif.*3 channels"):
        open_volume(path)


# ---- PNG and folders of slices ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, array",
    [
        ("L", RNG.integers(0, 255, (6, 9)).astype(np.uint8)),
        ("I;16", RNG.integers(0, 65535, (6, 9)).astype(np.uint16)),
        ("1", RNG.random((6, 9)) > 0.5),
        ("P", RNG.integers(0, 5, (6, 9)).astype(np.uint8)),
    ],
)
def test_png_modes_read_as_height_by_width(tmp_path, mode, array):
    path = tmp_path / f"image_{mode.replace(';', '')}.png"
    image = Image.fromarray(array)
    if mode == "P":
        image = image.convert("P")
        image.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
        image = Image.fromarray(array, mode="P") if False else image
    image.save(path)
    with open_volume(path) as volume:
        assert volume.shape == (1, 6, 9)
        np.testing.assert_array_equal(volume.read_slice(0), array)
        assert volume.read_slice(0).dtype == (bool if mode == "1" else array.dtype)


def test_grey_rgb_png_is_accepted_and_colour_png_rejected(tmp_path):
    grey = RNG.integers(0, 255, (5, 7)).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(open_volume(tmp_path / "grey.png").read_slice(0), grey)
    colour = RNG.integers(0, 255, (5, 7, 3)).astype(np.uint8)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(DataPreparationError, match="colour.png.*colour image"):
        open_volume(tmp_path / "colour.png").read_slice(0)


def test_folder_of_slices_is_sorted_naturally_and_read_per_file(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    for z in range(VOLUME.shape[0]):  # 0.tif, 1.tif, ... sorted by value, not as text
        tifffile.imwrite(folder / f"s{z * 5}.tif", VOLUME[z])
    (folder / ".hidden.tif").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    assert sorted(["s10.tif", "s5.tif", "s0.tif"], key=natural_key) == ["s0.tif", "s5.tif", "s10.tif"]
    with open_volume(folder) as volume:
        assert volume.format == "stack" and len(volume.files) == 5
        _check_volume(volume)
    with open_volume(str(folder / "s*.tif")) as volume:  # a glob gives the same stack
        _check_volume(volume)


def test_mixed_one_bit_and_eight_bit_slices_read_one_bit_as_0_255(tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    bits = RNG.random((4, 6)) > 0.5
    Image.fromarray(bits).save(folder / "0.png")
    Image.fromarray(np.where(bits, 200, 3).astype(np.uint8)).save(folder / "1.png")
    with open_volume(folder) as volume:
        assert volume.dtype == np.uint8
        np.testing.assert_array_equal(volume.read_slice(0), np.where(bits, 255, 0))
        assert "1-bit" in volume.describe()["notes"][0]


def test_folder_with_a_slice_of_another_shape_names_the_file(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(folder / "0.png")
    Image.fromarray(np.zeros((4, 7), np.uint8)).save(folder / "1.png")
    with pytest.raises(DataPreparationError, match=r"1\.png: slice shape \(4, 7\) differs"):
        open_volume(folder)


# ---- HDF5 ---------------------------------------------------------------------------------------------------


def test_hdf5_dataset_key_spacing_and_wrong_key(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "cell.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("raw", data=VOLUME[:, None], chunks=(1, 1, 12, 16))  # (Z, C=1, Y, X)
        ds.attrs["element_size_um"] = [0.0034, 0.004, 0.004]
        f.create_dataset("labels/mito", data=(VOLUME > 30000).astype(np.uint8))
    with open_volume(path, key="raw") as volume:
        assert volume.source.endswith("[raw]")
        _check_volume(volume)
        assert volume.spacing == pytest.approx((0.0034, 0.004, 0.004)) and volume.unit == "µm"
    with open_volume(path, key="labels/mito") as volume:
        np.testing.assert_array_equal(volume.read_slice(1), VOLUME[1] > 30000)
    with pytest.raises(DataPreparationError, match=r"cell\.h5: has no dataset 'seg'.*labels/mito.*raw"):
        open_volume(path, key="seg")
    with pytest.raises(DataPreparationError, match=r"cell\.h5: holds 2 datasets.*dataset key"):
        open_volume(path)


def test_hdf5_single_dataset_needs_no_key(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "one.hdf5"
    with h5py.File(path, "w") as f:
        f["volume"] = VOLUME
    with open_volume(path) as volume:
        _check_volume(volume)


# ---- N5 and Zarr --------------------------------------------------------------------------------------------


def _ts_write(driver, path, array, chunks=(2, 4, 4)):
    ts = pytest.importorskip("tensorstore")
    if driver == "n5":
        meta = {
            "dimensions": list(array.shape),
            "blockSize": list(chunks),
            "dataType": array.dtype.name,
            "compression": {"type": "gzip"},
        }
    elif driver == "zarr":
        meta = {"shape": list(array.shape), "chunks": list(chunks), "dtype": array.dtype.str}
    else:
        meta = {
            "shape": list(array.shape),
            "data_type": array.dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        }
    store = ts.open(
        {"driver": driver, "kvstore": {"driver": "file", "path": str(path)}, "metadata": meta, "create": True}
    ).result()
    store[...] = array


def test_n5_array_is_reversed_to_zyx_with_pixel_resolution(tmp_path):
    container = tmp_path / "cell.n5"
    _ts_write("n5", container / "em" / "s0", VOLUME.transpose(2, 1, 0))  # N5 lists x, y, z
    attrs = json.loads((container / "em" / "s0" / "attributes.json").read_text())
    attrs["pixelResolution"] = {"dimensions": [4.0, 4.0, 3.4], "unit": "nm"}
    (container / "em" / "s0" / "attributes.json").write_text(json.dumps(attrs))
    (container / "attributes.json").write_text('{"n5": "2.0.0"}')
    (container / "em" / "attributes.json").write_text('{"multiscales": []}')
    with open_volume(container, key="em/s0") as volume:
        assert volume.format == "n5"
        _check_volume(volume)
        assert volume.spacing == pytest.approx((3.4, 4.0, 4.0)) and volume.unit == "nm"
    with open_volume(container, key="em") as volume:  # a multiscale group opens its s0
        assert volume.source.endswith("[em/s0]")
    with pytest.raises(DataPreparationError, match=r"cell\.n5 \[nope\]: no N5 array or group"):
        open_volume(container, key="nope")
    with pytest.raises(DataPreparationError, match=r"is an N5 group, not an array.*em/s0"):
        open_volume(container)


def test_ome_zarr_v2_image_uses_its_first_scale_and_drops_the_channel_axis(tmp_path):
    image = tmp_path / "cell.ome.zarr"
    _ts_write("zarr", image / "0", VOLUME[None], chunks=(1, 2, 4, 4))  # (c, z, y, x)
    (image / ".zgroup").write_text('{"zarr_format": 2}')
    axes = [{"name": "c", "type": "channel"}] + [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    ms = {
        "version": "0.4",
        "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 3.4, 4, 4]}]}],
    }
    (image / ".zattrs").write_text(json.dumps({"multiscales": [ms]}))
    for key in (None, "0"):
        with open_volume(image, key=key) as volume:
            assert volume.format == "zarr"
            _check_volume(volume)
            assert volume.spacing == pytest.approx((3.4, 4.0, 4.0)) and volume.unit == "nanometer"


def test_zarr_v3_ome_image_and_plain_array(tmp_path):
    image = tmp_path / "cell.zarr"
    _ts_write("zarr3", image / "s0", VOLUME)
    ms = {
        "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
        "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [8, 8, 8]}]}],
    }
    group = {"zarr_format": 3, "node_type": "group", "attributes": {"ome": {"version": "0.5", "multiscales": [ms]}}}
    (image / "zarr.json").write_text(json.dumps(group))
    with open_volume(image) as volume:
        _check_volume(volume)
        assert volume.spacing == pytest.approx((8.0, 8.0, 8.0))
    plain = tmp_path / "plain.zarr"
    _ts_write("zarr", plain, VOLUME)
    with open_volume(plain) as volume:
        _check_volume(volume)
        assert volume.spacing is None
    bare = tmp_path / "bare.zarr"
    bare.mkdir()
    (bare / ".zgroup").write_text('{"zarr_format": 2}')
    with pytest.raises(DataPreparationError, match=r"bare\.zarr: is a Zarr group without OME-Zarr multiscales"):
        open_volume(bare)


# ---- NIfTI / MHA / NRRD -------------------------------------------------------------------------------------


def test_nifti_is_transposed_to_zyx_with_spacing(tmp_path):
    nib = pytest.importorskip("nibabel")
    path = tmp_path / "cell.nii.gz"
    nib.save(nib.Nifti1Image(VOLUME.transpose(2, 1, 0), np.diag([4.0, 5.0, 3.4, 1.0])), path)
    with open_volume(path) as volume:
        assert volume.format == "monai" and not volume.lazy
        _check_volume(volume)
        assert volume.spacing == pytest.approx((3.4, 5.0, 4.0))


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_formats_read_in_zyx_order_with_spacing(tmp_path, suffix):
    itk = pytest.importorskip("itk")
    image = itk.image_from_array(np.ascontiguousarray(VOLUME))  # ITK's numpy bridge is (z, y, x)
    image.SetSpacing((4.0, 5.0, 3.4))  # (x, y, z)
    path = tmp_path / f"cell{suffix}"
    itk.imwrite(image, str(path))
    with open_volume(path) as volume:
        _check_volume(volume)
        assert volume.spacing == pytest.approx((3.4, 5.0, 4.0))


# ---- errors -------------------------------------------------------------------------------------------------


def test_missing_unreadable_and_misused_sources_name_the_file(tmp_path):
    with pytest.raises(DataPreparationError, match=r"absent\.tif: file not found"):
        open_volume(tmp_path / "absent.tif")
    (tmp_path / "broken.tif").write_bytes(b"this is not a tiff")
    with pytest.raises(DataPreparationError, match=r"broken\.tif: cannot be read as a TIFF file"):
        open_volume(tmp_path / "broken.tif")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG nonsense")
    with pytest.raises(DataPreparationError, match=r"broken\.png: cannot be read as an image"):
        open_volume(tmp_path / "broken.png")
    (tmp_path / "broken.h5").write_bytes(b"nonsense")
    with pytest.raises(DataPreparationError, match=r"broken\.h5: cannot be read as an HDF5 file"):
        open_volume(tmp_path / "broken.h5", key="raw")
    tifffile.imwrite(tmp_path / "ok.tif", VOLUME)
    with pytest.raises(DataPreparationError, match=r"ok\.tif: a dataset key"):
        open_volume(tmp_path / "ok.tif", key="raw")
    with pytest.raises(DataPreparationError, match=r"nothing\*\.png: no file matches"):
        open_volume(str(tmp_path / "nothing*.png"))
    with pytest.raises(DataPreparationError, match="must name an N5"):
        open_volume("https://example.org/volume.tif")
    with pytest.raises(DataPreparationError, match=r"outside 0\.\.4"):
        open_volume(tmp_path / "ok.tif").read_slice(5)


# ---- read_image_2d ------------------------------------------------------------------------------------------


def test_read_image_2d_keeps_height_by_width_for_tiff_and_png(tmp_path):
    image = RNG.integers(0, 255, (6, 9)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", image)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image > 100).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(read_image_2d(tmp_path / "a.tif"), image)
    np.testing.assert_array_equal(read_image_2d(tmp_path / "a.png"), image)
    bits = read_image_2d(tmp_path / "bits.png")
    assert bits.dtype == np.uint8 and set(np.unique(bits)) <= {0, 1}


def test_read_image_2d_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        read_image_2d(tmp_path / "missing.tif")
    tifffile.imwrite(tmp_path / "stack.tif", VOLUME)
    with pytest.raises(ValueError, match=r"stack\.tif: expected a 2D single-channel image"):
        read_image_2d(tmp_path / "stack.tif")


def test_malformed_container_metadata_names_the_file(tmp_path):
    (tmp_path / "a.n5").mkdir()
    (tmp_path / "a.n5" / "attributes.json").write_text("[1, 2]")
    with pytest.raises(DataPreparationError, match=r"attributes\.json: expected a JSON object, got list"):
        open_volume(tmp_path / "a.n5")
    (tmp_path / "b.zarr").mkdir()
    (tmp_path / "b.zarr" / ".zarray").write_text('{"shape": "not a shape", "zarr_format": 2}')
    with pytest.raises(DataPreparationError, match=r"b\.zarr"):
        open_volume(tmp_path / "b.zarr")


def test_read_needing_more_than_half_the_memory_is_refused(tmp_path):
    from scsam_monai.io.readers import check_memory

    check_memory(1 << 20, "small.tif")
    with pytest.raises(DataPreparationError, match=r"huge\.tif: reading it needs 16384\.0 GiB, more than half"):
        check_memory(1 << 44, "huge.tif")
