"""The ADM reference Inception-v3 graph (``classify_image_graph_def.pb``) as a feature backend.

The ADM evaluator feeds the graph's ``ExpandDims:0`` tensor (the batched, still un-resized image that
the graph would otherwise decode from a JPEG) with float32 images ``[N, H, W, 3]`` holding the uint8
values 0..255; the graph itself resizes to 299x299 and normalises.  It reads

* ``pool_3:0`` ``[N, 1, 1, 2048]``, flattened to ``[N, 2048]``: FID and precision/recall;
* ``mixed_6/conv:0`` ``[N, 17, 17, 768]``, of which the first 7 channels are flattened to
  ``[N, 17*17*7 = 2023]``: sFID;
* class probabilities for the Inception Score: ``softmax(pool @ W)`` where ``W`` ``[2048, 1008]`` is the
  second input of the graph's ``softmax/logits/MatMul`` op (the graph's own bias is not added, exactly as
  in the ADM evaluator).  The graph's own ``pool_3/_reshape`` hard-codes a batch of 1, which is why the
  logits are rebuilt on the pooled features instead of being read from the graph.

Only ``tf.compat.v1`` graph import and a session are used, which TensorFlow 2 still supports.
"""

import hashlib
import os
from pathlib import Path

import numpy as np

from guided_diffusion.runtime.files import file_sha256

from .backend_base import FeatureBackend
from .user_cache import user_cache_root

INCEPTION_GRAPH_URL = (
    "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/"
    "classify_image_graph_def.pb"
)
INCEPTION_GRAPH_FILENAME = "classify_image_graph_def.pb"
# Size of the graph in Google's inception-2015-12-05 archive, which the ADM release re-hosts.  No
# published checksum was found, so downloads are checked by size and by the tensors the evaluator uses.
INCEPTION_GRAPH_SIZE = 95_673_916
GRAPH_ENV_VAR = "ADM_INCEPTION_GRAPH"

INPUT_TENSOR = "ExpandDims:0"
POOL_TENSOR = "pool_3:0"
SPATIAL_TENSOR = "mixed_6/conv:0"
LOGITS_MATMUL_OP = "softmax/logits/MatMul"
SPATIAL_CHANNELS = 7
REQUIRED_NODES = ("ExpandDims", "pool_3", "mixed_6/conv", LOGITS_MATMUL_OP)

__all__ = [
    "INCEPTION_GRAPH_URL",
    "INCEPTION_GRAPH_SIZE",
    "GRAPH_ENV_VAR",
    "MissingInceptionGraphError",
    "default_graph_path",
    "resolve_graph_path",
    "graph_fingerprint",
    "load_graph_def",
    "InceptionGraphBackend",
    "import_tensorflow",
]


class MissingInceptionGraphError(FileNotFoundError, ValueError):
    """The Inception graph file is not where it was looked for."""


def default_graph_path():
    """``$ADM_INCEPTION_GRAPH`` if set, else ``~/.cache/pag_adm/classify_image_graph_def.pb``
    (under ``$XDG_CACHE_HOME`` when that is set)."""
    env = os.environ.get(GRAPH_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return user_cache_root() / INCEPTION_GRAPH_FILENAME


def resolve_graph_path(graph_path=None):
    path = Path(graph_path).expanduser() if graph_path else default_graph_path()
    if not path.is_file():
        raise MissingInceptionGraphError(
            f"Inception graph not found at {path}. Get the ADM reference graph from {INCEPTION_GRAPH_URL} "
            f"with `python -m evaluations.download_inception --dest {path}` (or pass --download to the "
            f"evaluator), or point --inception_graph / ${GRAPH_ENV_VAR} at an existing copy."
        )
    return path


_FINGERPRINTS = {}


def graph_fingerprint(path, data=None):
    """``"inception:<first 16 hex digits of the graph's SHA-256>"`` (memoised per file version); `data`, the
    file's bytes if already read."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(path)
        _FINGERPRINTS[key] = f"inception:{digest[:16]}"
    return _FINGERPRINTS[key]


def import_tensorflow():
    """``tensorflow.compat.v1``, or an ImportError that says how to install it."""
    try:
        import tensorflow as tf  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "the Inception feature backend needs TensorFlow: pip install tensorflow-cpu "
            "(or tensorflow for GPU feature extraction), or pip install '.[eval]'"
        ) from exc
    return tf.compat.v1


def load_graph_def(path, data=None):
    """Parse a frozen GraphDef (from `data`, the file's bytes, if given) and check that it has the tensors the
    evaluator reads."""
    tf1 = import_tensorflow()
    path = Path(path)
    if data is None:
        data = path.read_bytes()
    graph_def = tf1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except Exception as exc:  # protobuf DecodeError
        raise ValueError(f"{path} is not a TensorFlow GraphDef ({exc}); re-download it") from None
    names = {node.name for node in graph_def.node}
    missing = [n for n in REQUIRED_NODES if n not in names]
    if missing:
        raise ValueError(
            f"{path} is not the ADM Inception graph: it lacks {', '.join(missing)}. "
            f"Download the right file from {INCEPTION_GRAPH_URL}."
        )
    return graph_def


class InceptionGraphBackend(FeatureBackend):
    """Pool / spatial / softmax features from the ADM reference Inception graph, with TensorFlow."""

    name = "inception"

    def __init__(self, graph_path=None, session_config=None):
        tf1 = import_tensorflow()
        self.graph_path = resolve_graph_path(graph_path)
        data = self.graph_path.read_bytes()
        self._fingerprint = graph_fingerprint(self.graph_path, data)
        graph_def = load_graph_def(self.graph_path, data)
        del data

        self.graph = tf1.Graph()
        with self.graph.as_default():
            self._images = tf1.placeholder(tf1.float32, shape=[None, None, None, 3], name="images")
            pool, spatial, matmul = tf1.import_graph_def(
                graph_def,
                input_map={INPUT_TENSOR: self._images},
                return_elements=[POOL_TENSOR, SPATIAL_TENSOR, LOGITS_MATMUL_OP],
                name="inception",
            )
            batch = tf1.shape(self._images)[0]
            self._pool = tf1.reshape(pool, [batch, -1])
            self._spatial = tf1.reshape(spatial[..., :SPATIAL_CHANNELS], [batch, -1])
            weights = matmul.inputs[1]
            self._probs = tf1.nn.softmax(tf1.matmul(self._pool, weights))

        if session_config is None:
            session_config = tf1.ConfigProto(allow_soft_placement=True)
            # Leave GPU memory to torch (precision/recall) and to other processes.
            session_config.gpu_options.allow_growth = True
        self.session = tf1.Session(graph=self.graph, config=session_config)

    def fingerprint(self):
        return self._fingerprint

    def compute(self, batch):
        images = np.asarray(batch).astype(np.float32)
        pool, spatial, probs = self.session.run(
            [self._pool, self._spatial, self._probs], feed_dict={self._images: images}
        )
        return {"pool": pool, "spatial": spatial, "probs": probs}

    def close(self):
        if getattr(self, "session", None) is not None:
            self.session.close()
            self.session = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
