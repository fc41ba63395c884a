"""Data: sources, Caffe's transform, our store, the loader, Caffe's data layers and the built-in dataset.

Modules (each one concern):

* `image`     decode + squash exactly as Caffe's ReadImageToCVMat (OpenCV when present, else Pillow + a
              bit-exact port of cv::resize INTER_LINEAR): `read_image`, `decode_image`, `resize_linear`.
* `sources`   Caffe list files and ILSVRC2012-style class folders, indexed with every problem reported:
              `read_list`, `index_list`, `index_folder`, `read_class_list`, `write_list`.
* `checks`    the bad-input policy: `BadFile`, `DataError` (lists every bad file), on_error="fail"|"skip".
* `caffedb`   Caffe LMDB / LevelDB of Datum records: `DatumDB`, `parse_datum`, `datum_bytes`, `DBWriter`.
* `store`     our pre-resized uint8 store: `Store` (memmap; `subset`, `select`), `compute_mean`.
* `convert`   convert_imageset / compute_image_mean: `convert_to_store` (resumable), `convert_to_db`,
              `convert_db_to_store`, `compute_image_mean`.
* `transform` DataTransformer::Transform on batches: `TransformSpec`, `Transformer`, `CaffeRand`.
* `loader`    `Loader` (worker threads, pinned memory, on-device transform, resumable state) and the batch
              sources shared with the data layers.
* `layer`     `DataLayerFeeder`: Data / ImageData layers inside repro.Net.
* `builtin`   the built-in procedural dataset: `ensure_builtin`, `export_images`.
* `cli`       the tools' command lines (tools/convert_imageset.py, compute_image_mean.py, make_builtin.py).

Names are imported lazily so `import repro.data` stays cheap.
"""

_EXPORTS = {
    "read_image": "image", "decode_image": "image", "resize_linear": "image", "ImageDecodeError": "image",
    "read_list": "sources", "index_list": "sources", "index_folder": "sources", "read_class_list": "sources",
    "BadFile": "checks", "DataError": "checks",
    "DatumDB": "caffedb", "parse_datum": "caffedb",
    "Store": "store", "compute_mean": "store",
    "convert_to_store": "convert", "convert_to_db": "convert", "convert_db_to_store": "convert",
    "compute_image_mean": "convert",
    "TransformSpec": "transform", "Transformer": "transform",
    "Loader": "loader",
    "DataLayerFeeder": "layer",
    "ensure_builtin": "builtin", "export_images": "builtin",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'repro.data' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{mod}", __name__), name)
