"""`rlhf checkpoints download`: the archive is kept only when its sha256 is the one the API gives."""

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from client.cli import cli

ARCHIVE = b"a checkpoint archive" * 1000


class Download(BaseHTTPRequestHandler):
    """The download route, with the ETag the test sets (the sha256 of the archive, or of something else)."""

    etag = ""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Length", str(len(ARCHIVE)))
        self.send_header("ETag", f'"{type(self).etag}"')
        self.send_header("Content-Disposition", 'attachment; filename="ckpt_1.tar"')
        self.end_headers()
        self.wfile.write(ARCHIVE)


@pytest.fixture
def base_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Download)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def download(base_url: str, *args: str):
    return CliRunner().invoke(cli, ["--base-url", base_url, "--api-key", "k", "checkpoints", "download", "ckpt_1",
                                    *args])


def test_a_download_is_written_under_its_name_when_its_sha256_matches(base_url, tmp_path, monkeypatch):
    Download.etag = hashlib.sha256(ARCHIVE).hexdigest()
    monkeypatch.chdir(tmp_path)
    result = download(base_url)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ckpt_1.tar").read_bytes() == ARCHIVE and f"sha256 {Download.etag} OK" in result.output
    (tmp_path / "into").mkdir()
    assert download(base_url, "-o", str(tmp_path / "into")).exit_code == 0
    assert (tmp_path / "into" / "ckpt_1.tar").read_bytes() == ARCHIVE


def test_a_corrupt_download_leaves_no_file_and_exits_1(base_url, tmp_path):
    Download.etag = hashlib.sha256(b"another archive").hexdigest()
    result = download(base_url, "-o", str(tmp_path / "model.tar"))
    assert result.exit_code == 1
    assert result.output.startswith("error: the download of ckpt_1 is corrupt: sha256 ")
    assert list(tmp_path.iterdir()) == []
