"""Where `rlhf` sends requests and which key it uses: options, then the environment, then var/api-key."""

from click.testing import CliRunner

from client.cli import cli
from client.config import DEFAULT_BASE_URL, resolve


def test_options_win_over_the_environment_and_the_key_file(tmp_path):
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "api-key").write_text("rlhf_from_file\n")
    env = {"RLHF_BASE_URL": "http://env:1", "RLHF_API_KEY": "rlhf_from_env"}
    config = resolve(base_url="http://option:2/", api_key="rlhf_from_option", env=env, cwd=tmp_path)
    assert (config.base_url, config.api_key, config.key_source) == ("http://option:2", "rlhf_from_option",
                                                                    "--api-key")
    config = resolve(env=env, cwd=tmp_path)
    assert (config.base_url, config.api_key, config.key_source) == ("http://env:1", "rlhf_from_env", "RLHF_API_KEY")


def test_without_options_or_environment_the_key_file_of_the_current_directory_is_read(tmp_path):
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "api-key").write_text("rlhf_from_file\n")
    config = resolve(env={}, cwd=tmp_path)
    assert (config.base_url, config.api_key, config.key_source) == (DEFAULT_BASE_URL, "rlhf_from_file",
                                                                    "var/api-key")
    assert resolve(env={}, cwd=tmp_path / "var").api_key is None  # relative to the directory, not searched for


def test_an_openai_style_base_url_names_the_same_server():
    assert resolve(env={"RLHF_BASE_URL": "http://h:8000/v1/"}).base_url == "http://h:8000"


def test_no_key_anywhere_is_one_line_and_exit_1(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RLHF_API_KEY", raising=False)
    result = CliRunner().invoke(cli, ["jobs", "list"])
    assert result.exit_code == 1
    assert result.output.startswith("error: no API key: pass --api-key, set RLHF_API_KEY") and "Traceback" not in \
        result.output


def test_an_unreachable_api_is_one_line_and_exit_1():
    result = CliRunner().invoke(cli, ["--base-url", "http://127.0.0.1:9", "--api-key", "k", "datasets", "list"])
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot reach the API at http://127.0.0.1:9")
    assert len(result.output.splitlines()) == 1
