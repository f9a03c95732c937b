"""Download the ADM reference Inception graph (run only when asked).

    python -m evaluations.download_inception [--dest PATH] [--force]

The file goes to ``--dest``, else ``$ADM_INCEPTION_GRAPH``, else
``~/.cache/pag_adm/classify_image_graph_def.pb``.  It is written to a temporary file, checked (size,
and when TensorFlow is installed, that it parses and has the tensors the evaluator reads) and only
then moved into place.
"""

import argparse
import sys
import urllib.request
from pathlib import Path

from guided_diffusion.runtime.files import atomic_write

from .inception import (
    INCEPTION_GRAPH_SIZE,
    INCEPTION_GRAPH_URL,
    default_graph_path,
    load_graph_def,
)

__all__ = ["download_inception_graph", "verify_graph_file", "main"]


def verify_graph_file(path, *, check_size=True):
    """Raise ``ValueError`` if ``path`` is not the expected Inception graph."""
    path = Path(path)
    size = path.stat().st_size
    if check_size and size != INCEPTION_GRAPH_SIZE:
        raise ValueError(
            f"{path} has {size} bytes, expected {INCEPTION_GRAPH_SIZE}: incomplete or wrong download"
        )
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return  # structure check needs TensorFlow; the size check above has passed
    load_graph_def(path)


def download_inception_graph(
    dest=None, *, url=INCEPTION_GRAPH_URL, force=False, progress=True
):
    """Fetch the graph to ``dest`` (default: :func:`evaluations.inception.default_graph_path`)."""
    dest = Path(dest).expanduser() if dest else default_graph_path()
    if dest.is_file() and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, lambda out: _download(url, out, dest.name, progress),
                 check=lambda tmp: verify_graph_file(tmp, check_size=url == INCEPTION_GRAPH_URL))
    return dest


def _download(url, out, name, progress):
    with urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc=name)
        while True:
            chunk = response.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Download the ADM reference Inception graph.")
    parser.add_argument("--dest", default=None, help=f"target file (default: {default_graph_path()})")
    parser.add_argument("--url", default=INCEPTION_GRAPH_URL)
    parser.add_argument("--force", action="store_true", help="download even if the file exists")
    args = parser.parse_args(argv)
    try:
        path = download_inception_graph(args.dest, url=args.url, force=args.force)
    except (OSError, ValueError) as exc:
        print(f"download failed: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
