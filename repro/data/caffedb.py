"""Caffe's databases of Datum records (LMDB and LevelDB), read and written as Caffe does.

* `db_kind(path)`: an LMDB folder holds `data.mdb`, a LevelDB folder `CURRENT` (Caffe's `db::GetDB` takes
  the backend from the prototxt; we look at the folder, so a wrong `backend:` still opens the right thing).
* Reading: LMDB read-only without locking (`lock=False`: works on read-only copies without `lock.mdb`);
  LevelDB through `plyvel` (an optional dependency: `pip install plyvel`). Keys are visited in key order,
  which is the order Caffe's cursor visits them.
* A Datum value is Caffe's `caffe.Datum`: uint8 `data` C×H×W BGR, or `float_data`, or `encoded` image
  bytes (decoded like `DecodeDatumToCVMat`).
* Writing mirrors `convert_imageset`: keys `%08d_<filename>`, values `CVMatToDatum` + label, committed in
  transactions of 1000.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from ..errors import ReproError
from ..proto import caffe_pb2
from .image import decode_image, to_chw


class DBError(ReproError):
    """A Caffe database that cannot be opened or holds something other than Datum records."""


def db_kind(path: str | os.PathLike) -> str | None:
    """'lmdb', 'leveldb' or None, from the folder's content."""
    p = Path(path)
    if (p / "data.mdb").is_file():
        return "lmdb"
    if (p / "CURRENT").is_file():
        return "leveldb"
    return None


_OPEN: dict = {}  # (kind, realpath) -> [handle, users]: LMDB and LevelDB allow one open handle per process
_OPEN_LOCK = threading.Lock()


def _acquire(kind: str, path: Path):
    key = (kind, os.path.realpath(path))
    with _OPEN_LOCK:
        if key in _OPEN:
            _OPEN[key][1] += 1
            return _OPEN[key][0]
        if kind == "lmdb":
            import lmdb

            try:
                h = lmdb.open(str(path), readonly=True, lock=False, readahead=False, max_readers=512, subdir=True)
            except lmdb.Error as e:
                raise DBError(f"cannot open LMDB {path}: {e}") from None
        else:
            try:
                h = _plyvel().DB(str(path), create_if_missing=False)
            except DBError:
                raise
            except Exception as e:  # plyvel raises its own IOError/CorruptionError
                raise DBError(f"cannot open LevelDB {path}: {e}") from None
        _OPEN[key] = [h, 1]
        return h


def _release(kind: str, path: Path):
    key = (kind, os.path.realpath(path))
    with _OPEN_LOCK:
        entry = _OPEN.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _OPEN[key]
            entry[0].close()


def _plyvel():
    try:
        import plyvel  # type: ignore
    except ImportError:
        raise DBError("reading a LevelDB needs the optional package plyvel (pip install plyvel)") from None
    return plyvel


class DatumDB:
    """A read-only Caffe LMDB or LevelDB. Iterate `items(start)` for (key, value) in key order."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.kind = db_kind(self.path)
        if self.kind is None:
            raise DBError(f"{self.path} is not a Caffe database (no data.mdb for LMDB, no CURRENT for LevelDB)")
        self._closed = False
        if self.kind == "lmdb":
            self._env = _acquire("lmdb", self.path)
            self._len = int(self._env.stat()["entries"])
        else:
            self._db = _acquire("leveldb", self.path)
            # LevelDB keeps no count; counting reads the whole database (ImageNet: ~250 GB), so it is done
            # only when asked (len()), never to read sequentially.
            self._len = None if next(self._db.iterator(include_value=False), None) is not None else 0
        if self._len == 0:
            self.close()
            raise DBError(f"{self.path} holds no records")

    @property
    def known_len(self) -> int | None:
        """The record count when it is free (LMDB, or a LevelDB already counted), else None."""
        return self._len

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(1 for _ in self._db.iterator(include_value=False))
        return self._len

    def items(self, start: int = 0):
        """(key, value) pairs from record `start` (0-based, key order) to the end."""
        if self.kind == "lmdb":
            with self._env.begin(buffers=False) as txn:
                cur = txn.cursor()
                if not cur.first():
                    return
                for _ in range(start):
                    if not cur.next():
                        return
                while True:
                    yield cur.key(), cur.value()
                    if not cur.next():
                        return
        else:
            it = self._db.iterator()
            for i, kv in enumerate(it):
                if i >= start:
                    yield kv

    def close(self):
        if self._closed:
            return
        self._closed = True
        _release(self.kind, self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def parse_datum(value: bytes, force_color: bool = False, force_gray: bool = False,
                where: str = "datum") -> tuple[np.ndarray, int]:
    """A Datum value -> (C×H×W array, label). uint8 for `data`, float32 for `float_data`; an encoded Datum is
    decoded (`DecodeDatumToCVMat`): in colour with force_color, gray with force_gray, else as stored."""
    try:
        d = caffe_pb2.Datum.FromString(value)
    except Exception as e:
        raise DBError(f"{where}: not a caffe.Datum record ({e})") from None
    if d.encoded:
        color = True if force_color else False if force_gray else None  # None: DecodeDatumToCVMatNative
        try:
            img = decode_image(d.data, color=color)
        except ValueError as e:
            raise DBError(f"{where}: encoded Datum: {e}") from None
        return to_chw(img), int(d.label)
    shape = (d.channels, d.height, d.width)
    if d.data:
        arr = np.frombuffer(d.data, dtype=np.uint8)
    elif len(d.float_data):
        arr = np.asarray(d.float_data, dtype=np.float32)
    else:
        raise DBError(f"{where}: Datum has neither data nor float_data")
    if arr.size != int(np.prod(shape)):
        raise DBError(f"{where}: Datum says {shape[0]}×{shape[1]}×{shape[2]} but holds {arr.size} values")
    return arr.reshape(shape), int(d.label)


def datum_bytes(chw: np.ndarray, label: int) -> bytes:
    """Caffe's `CVMatToDatum` + `set_label`: channels, height, width, encoded=false, data; byte-identical
    to convert_imageset's records (proto2 serialises fields in number order)."""
    if chw.dtype != np.uint8 or chw.ndim != 3:
        raise ValueError(f"a Datum holds uint8 C×H×W, got {chw.dtype} {chw.shape}")
    d = caffe_pb2.Datum(channels=chw.shape[0], height=chw.shape[1], width=chw.shape[2],
                        data=np.ascontiguousarray(chw).tobytes(), label=int(label), encoded=False)
    return d.SerializeToString()


def datum_key(index: int, name: str) -> bytes:
    """convert_imageset's key: `caffe::format_int(line_id, 8) + "_" + filename`."""
    return f"{index:08d}_{name}".encode()


class DBWriter:
    """Writes Datum records into a new LMDB or LevelDB folder, committing every `commit_every` puts
    (convert_imageset commits every 1000). The folder must not exist yet."""

    def __init__(self, path: str | os.PathLike, backend: str = "lmdb", commit_every: int = 1000,
                 map_size: int = 1 << 40):
        self.path, self.backend, self.commit_every = Path(path), backend, commit_every
        if self.path.exists():
            raise FileExistsError(f"{self.path} already exists; Caffe's convert_imageset refuses too")
        self._pending = []
        if backend == "lmdb":
            import lmdb

            self.path.mkdir(parents=True)
            # Caffe: LMDB_MAP_SIZE 1 TB; the file is sparse, so this costs nothing on disk.
            self._env = lmdb.open(str(self.path), map_size=map_size, subdir=True, lock=True)
        elif backend == "leveldb":
            self._db = _plyvel().DB(str(self.path), create_if_missing=True, error_if_exists=True,
                                    write_buffer_size=268435456)  # Caffe: options.write_buffer_size 256 MB
        else:
            raise ValueError(f"backend must be 'lmdb' or 'leveldb', got {backend!r}")

    def put(self, key: bytes, value: bytes):
        self._pending.append((key, value))
        if len(self._pending) >= self.commit_every:
            self.commit()

    def commit(self):
        if not self._pending:
            return
        if self.backend == "lmdb":
            with self._env.begin(write=True) as txn:
                for k, v in self._pending:
                    txn.put(k, v)
        else:
            with self._db.write_batch() as wb:
                for k, v in self._pending:
                    wb.put(k, v)
        self._pending = []

    def close(self):
        self.commit()
        if self.backend == "lmdb":
            self._env.sync()
            self._env.close()
        else:
            self._db.close()
