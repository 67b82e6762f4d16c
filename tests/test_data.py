"""Fashion-MNIST arrives on any machine: from a folder, the cache, Debian's package, or a checked download.

The downloads are real: an HTTP server on 127.0.0.1 (a thread of this process) serves Debian's copy of the
four files, whole, corrupted, or cut off mid-file. No test reaches any other address: the published
locations are replaced by the local server, or by a closed local port, in every test.
"""

import gzip
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from normlib.lab import data
from normlib.lab.data import ChecksumError, FashionMNISTUnavailable, fashion_mnist

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
NAMES = [f.name for f in data.FASHION_MNIST_FILES]


@pytest.fixture(scope="module", autouse=True)
def _debian_package():
    if not all((DEBIAN / n).is_file() for n in NAMES):
        pytest.fail(f"Debian's dataset-fashion-mnist is missing ({DEBIAN}): these tests serve its files. "
                    "Install it: apt-get install dataset-fashion-mnist (`make test` does, as root).")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def machine(tmp_path, monkeypatch):
    """A machine without Debian's package and offline: an empty cache, published locations unreachable."""
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "no-debian-package")
    monkeypatch.setattr(data, "FASHION_MNIST_URLS", (f"http://127.0.0.1:{_closed_port()}/",))
    monkeypatch.setattr(data, "RETRY_WAIT", 0.0)
    monkeypatch.setenv("NORMLIB_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)
    monkeypatch.delenv(data.FALLBACK_ENV, raising=False)
    return tmp_path / "cache" / "fashion-mnist"


class Server:
    """Serves Debian's files on 127.0.0.1; ``mode`` says how: whole, corrupt, drop (always), drop-once."""

    def __init__(self):
        self.mode, self.requests = "whole", []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                owner.requests.append(name)
                if name not in NAMES:
                    self.send_error(404)
                    return
                body = (DEBIAN / name).read_bytes()
                if owner.mode == "corrupt":  # one byte flipped in the middle of the compressed stream
                    mid = len(body) // 2
                    body = body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1:]
                elif owner.mode == "wrong-content":  # a valid gzip of content one byte off
                    raw = bytearray(gzip.decompress(body))
                    raw[-1] ^= 1
                    body = gzip.compress(bytes(raw), compresslevel=1)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if owner.mode == "drop" or (owner.mode == "drop-once" and owner.requests.count(name) == 1):
                    self.wfile.write(body[:1000])  # then the connection closes, short of Content-Length
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Quiet(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client that hung up (Ctrl-C) is expected
                pass

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/fashion/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def server(monkeypatch):
    """The local server as a copy of the files ($NORMLIB_FASHION_MNIST_URL): only their content is checked."""
    s = Server()
    monkeypatch.setenv(data.MIRROR_ENV, s.url)
    yield s
    s.close()


def _left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_is_checked_cached_and_the_cache_serves_the_second_call(server, machine):
    got = fashion_mnist(n_train=100, n_test=50)
    assert got.name == "Fashion-MNIST"
    assert sorted(server.requests) == sorted(NAMES), "each file is downloaded once"
    assert _left_in(machine) == sorted(NAMES), "the four files, and no temporary file, are in the cache"
    want = fashion_mnist(n_train=100, n_test=50, root=DEBIAN)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), "the download is Debian's data"
    again = fashion_mnist(n_train=100, n_test=50)
    assert len(server.requests) == 4, "the second call reads the cache and sends no request"
    assert all(torch.equal(a, b) for a, b in zip(again, got, strict=True))


def test_the_published_location_is_checked_against_the_published_md5s(machine, monkeypatch):
    """Debian's recompressed files served as if they were the published ones fail the published MD5."""
    s = Server()
    try:
        monkeypatch.setattr(data, "FASHION_MNIST_URLS", (s.url,))
        with pytest.raises(FashionMNISTUnavailable, match="8d4fb7e6c68d591d4c3dfef9ec88bf0d") as e:
            fashion_mnist()
        assert f"MD5 {hashlib.md5((DEBIAN / NAMES[0]).read_bytes()).hexdigest()}" in str(e.value)  # Debian's
        assert s.requests == [NAMES[0]], "a checksum mismatch is not retried"
    finally:
        s.close()
    assert _left_in(machine) == [], "nothing is cached"


@pytest.mark.parametrize("mode", ["corrupt", "wrong-content"])
def test_a_corrupted_download_is_an_error_and_nothing_is_cached(server, machine, mode):
    server.mode = mode
    with pytest.raises(FashionMNISTUnavailable, match="could not be downloaded") as e:
        if mode == "corrupt":
            fashion_mnist()
        else:  # a small file: valid gzip, one byte of content changed
            spec = data.FASHION_MNIST_FILES[3]
            machine.mkdir(parents=True)
            data.download_file(spec, machine / spec.name)
    assert ("not a readable gzip" if mode == "corrupt" else "SHA-256") in str(e.value)
    assert len(server.requests) == 1, "a checksum mismatch is not retried"
    assert _left_in(machine) == [], "nothing is cached, not even a temporary file"


def test_a_server_that_drops_the_connection_is_retried_then_a_clear_error(server, machine):
    server.mode = "drop"
    with pytest.raises(FashionMNISTUnavailable) as e:
        fashion_mnist()
    assert server.requests == [NAMES[0]] * 3, "three tries, then it gives up"
    message = str(e.value)
    assert "IncompleteRead" in message and message.count(server.url + NAMES[0]) == 3
    assert "apt-get install dataset-fashion-mnist" in message and "root=" in message
    assert _left_in(machine) == []


def test_a_dropped_connection_is_retried_and_the_retry_succeeds(server, machine):
    server.mode = "drop-once"
    assert fashion_mnist(n_train=10, n_test=10).name == "Fashion-MNIST"
    assert sorted(server.requests) == sorted(NAMES * 2)
    assert _left_in(machine) == sorted(NAMES)


def test_ctrl_c_during_a_download_leaves_no_file(server, machine, monkeypatch):
    class Interrupting:  # stands in for tqdm: the reader presses Ctrl-C after the first chunk
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            raise KeyboardInterrupt

    monkeypatch.setattr("tqdm.tqdm", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        fashion_mnist()
    assert _left_in(machine) == []


def test_offline_it_stops_with_how_to_get_the_data(machine):
    with pytest.raises(FashionMNISTUnavailable) as e:
        fashion_mnist()
    message = str(e.value)
    for how in ("apt-get install dataset-fashion-mnist", data._PUBLISHED_URL, str(machine), "root=",
                "NORMLIB_DATA", f"{data.FALLBACK_ENV}=digits", "fallback=True"):
        assert how in message, f"the error does not say {how!r}:\n{message}"
    assert isinstance(e.value, FileNotFoundError)
    assert _left_in(machine) == []
    with pytest.raises(FashionMNISTUnavailable, match="download=False"):
        fashion_mnist(download=False)


def test_the_digits_stand_in_only_when_asked_and_it_says_so(machine, monkeypatch, capsys):
    with pytest.raises(FashionMNISTUnavailable):
        fashion_mnist(download=False)
    for ask in ("argument", "environment"):
        if ask == "argument":
            got = fashion_mnist(download=False, fallback=True)
        else:
            monkeypatch.setenv(data.FALLBACK_ENV, "digits")
            got = fashion_mnist(download=False)
        assert got.name.startswith("digits") and got[0].shape[1:] == (1, 28, 28)
        out = capsys.readouterr().out
        assert "Using the stand-in" in out and "may not hold" in out, out
    assert fashion_mnist(root=DEBIAN, fallback=True).name == "Fashion-MNIST", "the real data wins when there"
    with pytest.raises(FashionMNISTUnavailable):
        fashion_mnist(download=False, fallback=False)  # an explicit False beats the environment


def test_where_it_looks_root_then_cache_then_debian(server, machine, monkeypatch, tmp_path):
    assert data.fashion_mnist_dir(DEBIAN) == DEBIAN
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", DEBIAN)
    assert data.fashion_mnist_dir() == DEBIAN and server.requests == [], "Debian's package: no download"
    root = tmp_path / "mine"
    assert data.fashion_mnist_dir(root) == root and sorted(server.requests) == sorted(NAMES), \
        "an explicit root is where the files are downloaded to"
    machine.mkdir(parents=True)
    for name in NAMES:
        (machine / name).write_bytes((root / name).read_bytes())
    assert data.fashion_mnist_dir() == machine, "the cache comes before Debian's package"


def test_a_damaged_local_copy_is_refused_by_name(tmp_path):
    root = tmp_path / "copy"
    root.mkdir()
    for name in NAMES:
        (root / name).write_bytes((DEBIAN / name).read_bytes())
    raw = bytearray(gzip.decompress((root / NAMES[3]).read_bytes()))
    raw[-1] ^= 1
    (root / NAMES[3]).write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(ChecksumError, match=f"{NAMES[3]} does not hold the published"):
        fashion_mnist(root=root)


def test_debians_files_hold_the_pinned_content_and_load_balanced_and_standardised():
    data_ = fashion_mnist(n_train=50, n_test=20, root=DEBIAN)
    x_tr, y_tr, x_te, y_te = data_
    assert data_.name == "Fashion-MNIST" and x_tr.shape == (50, 1, 28, 28) and x_te.shape == (20, 1, 28, 28)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert torch.bincount(y_tr).tolist() == [5] * 10 and torch.bincount(y_te).tolist() == [2] * 10
    assert abs(x_tr.mean().item()) < 1e-5 and abs(x_tr.std().item() - 1) < 1e-2
    assert torch.equal(fashion_mnist(n_train=50, n_test=20, root=DEBIAN)[0], x_tr)  # fixed by the seed
    full = [data._read_idx(DEBIAN / f.name, f) for f in data.FASHION_MNIST_FILES]
    assert [a.shape for a in full] == [(60000, 28, 28), (60000,), (10000, 28, 28), (10000,)]
    assert all(np.bincount(a).tolist() == [len(a) // 10] * 10 for a in full[1::2])


def test_the_command_line_fetches_and_checks(server, machine, capsys):
    assert data.main([]) == 0
    assert f"Fashion-MNIST: {machine} (checked)" in capsys.readouterr().out
    assert sorted(server.requests) == sorted(NAMES)
    server.mode = "drop"
    assert data.main(["--root", str(machine.parent / "elsewhere")]) == 1
    assert "apt-get install" in capsys.readouterr().err


@pytest.mark.parametrize(("group_size", "batch_size"), [(2, 32), (16, 16), (3, 12)])
def test_same_class_batches_are_whole_groups_of_one_class(group_size, batch_size):
    y = torch.arange(10).repeat_interleave(torch.arange(20, 40, 2))  # 10 classes of 20..38 samples
    batches = data.same_class_batches(y, group_size, batch_size, torch.Generator().manual_seed(0))
    groups = sum(int((y == c).sum()) // group_size for c in range(10))
    assert len(batches) == groups // (batch_size // group_size)
    seen = torch.cat(batches)
    assert len(seen) == len(set(seen.tolist()))  # no sample twice in an epoch
    for batch in batches:
        assert batch.shape == (batch_size,)
        for group in batch.view(-1, group_size):
            assert len(y[group].unique()) == 1
    classes_per_batch = [len(y[b].unique()) for b in batches]
    if group_size == batch_size:
        assert set(classes_per_batch) == {1}
    else:
        assert max(classes_per_batch) > 1  # groups of different classes are mixed
    again = data.same_class_batches(y, group_size, batch_size, torch.Generator().manual_seed(0))
    other = data.same_class_batches(y, group_size, batch_size, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(batches, other, strict=True))


def test_same_class_batches_refuse_a_batch_that_is_not_whole_groups():
    with pytest.raises(ValueError, match="multiple of group_size"):
        data.same_class_batches(torch.zeros(8, dtype=torch.long), 3, 8, torch.Generator())
