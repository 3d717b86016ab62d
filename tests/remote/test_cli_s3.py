"""The ``reshard`` command line against a real S3-protocol server (moto on loopback) that
only the command line's ``--storage-option endpoint_url=...`` reaches: no AWS variables or
config files in the environment. inspect, verify, convert S3 -> local safetensors, local
-> S3 and S3 -> S3; the same command with the endpoint of a closed port fails naming the
URL. Skipped, as every test here, when moto[server] or s3fs is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reshard
from reshard.cli import main

from .s3server import free_port, storage_options

pytestmark = pytest.mark.s3

FULL = {"w": torch.arange(6 * 10, dtype=torch.float32).reshape(6, 10),
        "b": torch.arange(7, dtype=torch.int64), "h": torch.arange(12, dtype=torch.bfloat16)}


def _cli_options(endpoint: str, flag: str = "--storage-option") -> list[str]:
    """storage_options(endpoint), spelt as the command line takes them: client_kwargs
    (the region) and config_kwargs as JSON objects, the endpoint URL as a plain string."""
    out: list[str] = []
    for key, value in storage_options(endpoint).items():
        out += [flag, f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return out


@pytest.fixture()
def bare_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """No AWS setting from the environment: the command line is the only way to the bucket."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "BOTO")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("RESHARD_REMOTE_ATTEMPTS", "2")
    monkeypatch.setenv("RESHARD_REMOTE_BACKOFF_S", "0.01")
    return dict(os.environ)


def test_inspect_verify_convert_through_the_command_line_endpoint(
    s3_endpoint: str, s3_bucket: str, bare_env: dict[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"s3://{s3_bucket}/ckpt"
    reshard.save({**FULL, "step": 12}, url, storage_options=storage_options(s3_endpoint))
    opts = _cli_options(s3_endpoint)

    assert main(["inspect", url, *opts]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert all(key in out for key in FULL) and "[6, 10]" in out and "4 keys" in out, out

    assert main(["verify", url, *opts]) == 0, capsys.readouterr().err
    assert "intact" in capsys.readouterr().out.lower()

    load_file = pytest.importorskip("safetensors.torch").load_file
    out_file = tmp_path / "model.safetensors"
    assert main(["convert", url, str(out_file), "--quiet", *opts]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == str(out_file)
    got = load_file(str(out_file))
    assert got.keys() == FULL.keys() and all(torch.equal(got[k], v) for k, v in FULL.items())

    # Local -> S3 (options for DST only), then S3 -> S3 (one set for both sides).
    back = f"s3://{s3_bucket}/from-safetensors"
    dst_opts = _cli_options(s3_endpoint, "--dst-storage-option")
    argv = ["convert", str(out_file), back, "--quiet", *dst_opts]
    assert main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == back
    copy = f"s3://{s3_bucket}/copy"
    argv = ["convert", back, copy, "--quiet", "--codec", "zstd", *opts]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    with reshard.open(copy, storage_options=storage_options(s3_endpoint)) as ck:
        assert sorted(ck.keys()) == sorted([*FULL, "step"]) and ck.read("step") == 12
        for key, value in FULL.items():
            assert torch.equal(ck.read(key), value), key
    assert main(["verify", copy, *opts]) == 0
    # Nothing there to be replaced: a second conversion to the same URL is refused, and
    # so is one to the bucket, which holds the other checkpoints' folders.
    for dst in (copy, f"s3://{s3_bucket}"):
        assert main(["convert", back, dst, "--quiet", *opts]) == 1
        err = capsys.readouterr().err
        assert f"DST {dst} holds" in err and "nothing is stored yet" in err, err


def test_the_endpoint_option_is_what_reaches_the_bucket(
    s3_endpoint: str, s3_bucket: str, bare_env: dict[str, str], capsys: pytest.CaptureFixture[str],
) -> None:
    """The same inspect with endpoint_url naming a closed port fails (exit 1, one line naming
    the URL); with the server's it lists the keys. The real entry point, in a process of its
    own, with no AWS setting in its environment."""
    url = f"s3://{s3_bucket}/ckpt"
    reshard.save(FULL, url, storage_options=storage_options(s3_endpoint))
    closed = _cli_options(f"http://127.0.0.1:{free_port()}")
    assert main(["inspect", url, *closed]) == 1
    err = capsys.readouterr().err
    assert err.startswith("reshard inspect: ") and url in err and err.count("\n") == 1, err

    cli = [sys.executable, "-c", "import sys; from reshard.cli import main; sys.exit(main())"]
    done = subprocess.run([*cli, "inspect", url, *_cli_options(s3_endpoint)], env=bare_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert all(key in done.stdout for key in FULL) and "3 keys" in done.stdout, done.stdout
