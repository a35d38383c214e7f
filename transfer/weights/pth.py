"""A NumPy-only reader for legacy (non-zip) PyTorch `.pth` files.

PyTorch before 1.6 saved checkpoints as a stream of pickles followed by raw
tensor storages. `torch.load` unpickles that stream with the full `pickle`
machinery, so a crafted file can run arbitrary code. This reader never imports
torch and never lets the pickle resolve a name outside a short allow-list:
`collections.OrderedDict`, the tensor rebuild functions and the storage
classes. Anything else raises `UnsafeWeightsError` before it is called.
"""

import collections
import io
import pickle
import struct

import numpy as np

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeWeightsError(ValueError):
    """A weights file asked the unpickler for a name outside the allow-list."""


class _StorageType:
    def __init__(self, name):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A placeholder filled with data once the storages are read."""

    def __init__(self, key, dtype, size):
        self.key = key
        self.dtype = dtype
        self.size = size
        self.data = None


class _LazyTensor:
    def __init__(self, storage, offset, shape, stride):
        self.storage = storage
        self.offset = offset
        self.shape = tuple(shape)
        self.stride = tuple(stride)

    def materialize(self):
        data = self.storage.data
        if not self.shape:
            return np.array(data[self.offset])
        itemsize = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.shape,
            strides=[s * itemsize for s in self.stride],
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor(storage, offset, shape, stride, *unused):
    return _LazyTensor(storage, offset, shape, stride)


def _rebuild_parameter(tensor, *unused):
    return tensor


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path, storages):
        super().__init__(file, encoding="latin1")
        self._path = path
        self._storages = storages

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeWeightsError(
            f"Refusing to load '{self._path}': it asks to import "
            f"'{module}.{name}', which a plain weights file never needs. "
            "Only tensors and dicts of tensors are read. Use a weights file "
            "from a source you trust, or convert it to safetensors."
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafeWeightsError(
                f"Refusing to load '{self._path}': unknown persistent id "
                f"{pid!r}."
            )
        storage_type, key, _location, size = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafeWeightsError(
                f"Refusing to load '{self._path}': bad storage type."
            )
        if key not in self._storages:
            self._storages[key] = _Storage(key, storage_type.dtype, size)
        return self._storages[key]


def load_legacy_pth(path):
    """Reads a legacy PyTorch state dict into NumPy arrays, running no code.

    Args:
        path: path to a `.pth` file written by `torch.save` with
            `_use_new_zipfile_serialization=False` (PyTorch < 1.6 default).

    Returns:
        A dict mapping each state-dict key to a `np.ndarray`.

    Raises:
        UnsafeWeightsError: the pickle names anything but tensors and dicts.
        ValueError: the file is not a legacy `.pth` file or is truncated.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"PK":
        raise ValueError(
            f"'{path}' is a zip-format PyTorch file; this reader handles the "
            "legacy format only. Convert it to safetensors first."
        )
    stream = io.BytesIO(raw)
    storages = {}
    try:
        magic = _RestrictedUnpickler(stream, path, storages).load()
        if magic != _MAGIC_NUMBER:
            raise ValueError(f"'{path}' is not a PyTorch .pth file.")
        _RestrictedUnpickler(stream, path, storages).load()  # protocol
        _RestrictedUnpickler(stream, path, storages).load()  # sys info
        state = _RestrictedUnpickler(stream, path, storages).load()
        keys = _RestrictedUnpickler(stream, path, storages).load()
        for key in keys:
            (count,) = struct.unpack("<q", stream.read(8))
            storage = storages[key]
            nbytes = count * storage.dtype.itemsize
            buffer = stream.read(nbytes)
            if len(buffer) != nbytes:
                raise ValueError(f"'{path}' is truncated.")
            storage.data = np.frombuffer(buffer, dtype=storage.dtype)
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError) as e:
        raise ValueError(
            f"'{path}' is not a readable legacy PyTorch weights file ({e})."
        ) from e
    if not isinstance(state, dict):
        raise ValueError(f"'{path}' does not hold a state dict.")
    return {
        name: value.materialize()
        for name, value in state.items()
        if isinstance(value, _LazyTensor)
    }
