"""``--storage-option KEY=VALUE`` (and convert's ``--src-``/``--dst-storage-option``): the
fsspec storage_options the Python API takes, from the command line. Parsing, usage errors
(exit 2, naming the option, never showing a value), options for local paths refused, and
end-to-end runs on fsspec's memory:// filesystem, where a ``simplecache`` option given on
the command line must reach fsspec (its cache folder fills). The same against a real S3
server, reachable only through the command line's endpoint_url: tests/remote/test_cli_s3.py.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

import reshard
from reshard.cli import main
from reshard.cli_storage import parse_storage_option

PARSED: list[tuple[str, tuple[str, Any]]] = [
    ("anon=true", ("anon", True)), ("anon=false", ("anon", False)), ("n=8", ("n", 8)),
    ("x=1.5", ("x", 1.5)), ("x=null", ("x", None)), ("x=-3", ("x", -3)),
    ('client_kwargs={"region_name": "eu-west-1"}', ("client_kwargs", {"region_name": "eu-west-1"})),
    ('config_kwargs={"retries": {"max_attempts": 1}}', ("config_kwargs", {"retries": {"max_attempts": 1}})),
    ("endpoint_url=http://127.0.0.1:9000", ("endpoint_url", "http://127.0.0.1:9000")),
    ("profile=dev", ("profile", "dev")), ('key="123"', ("key", "123")), ("key=123", ("key", 123)),
    ("x=", ("x", "")), ("x==y", ("x", "=y")), ("x=a=b", ("x", "a=b")), ("x=[1, 2]", ("x", [1, 2])),
    ("x=NaN", ("x", "NaN")), ("x=Infinity", ("x", "Infinity")), ("x={not json", ("x", "{not json")),
    (" x =1", ("x", 1)), ("x= spaced ", ("x", " spaced ")), ("x=True", ("x", "True")),
]


@pytest.mark.parametrize(("text", "want"), PARSED, ids=[t for t, _ in PARSED])
def test_values_are_json_where_they_parse_else_strings(text: str, want: tuple[str, Any]) -> None:
    got = parse_storage_option(text)
    assert got == want and type(got[1]) is type(want[1])


def _url(name: str) -> str:
    """A fresh memory:// URL (fsspec, an optional dependency: the test is skipped without it)."""
    pytest.importorskip("fsspec")
    return f"memory://cli-options-{uuid.uuid4().hex[:8]}/{name}"


COMMANDS = {
    "inspect": lambda url: ["inspect", url],
    "verify": lambda url: ["verify", url],
    "convert": lambda url: ["convert", url, "/nonexistent-dst-dir/out", "--quiet"],
}
FLAGS = {"inspect": ["--storage-option"], "verify": ["--storage-option"],
         "convert": ["--storage-option", "--src-storage-option", "--dst-storage-option"]}


def test_malformed_options_are_usage_errors_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    """No '=', an empty KEY, a KEY given twice: exit 2, the flag named, the value (maybe a
    secret) never shown, nothing opened (the URL's bucket is never reached)."""
    url = "memory://cli-options-never-opened/x"
    failures = []
    for command, flags in FLAGS.items():
        for flag in flags:
            for given, says in ((["secret"], "no '='"), (["=s3cr3t-value"], "KEY of KEY=VALUE is empty"),
                                ([" =s3cr3t-value"], "KEY of KEY=VALUE is empty"),
                                (["secret=s3cr3t-value", "secret=s3cr3t-other"], "'secret' given twice")):
                argv = COMMANDS[command](url) + [a for g in given for a in (flag, g)]
                code = main(argv)
                err = capsys.readouterr().err
                if code != 2 or f"argument {flag}: " not in err or says not in err:
                    failures.append(f"{argv}: exit {code}, {err!r}")
                if "s3cr3t" in err:
                    failures.append(f"{argv}: the value is shown: {err!r}")
    assert not failures, "\n".join(failures)


def test_options_for_local_paths_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not ignored: they would do nothing, and ``s3:/bucket/x`` (one slash) is a local
    path, which the option points out. Exit 2, nothing written."""
    reshard.save({"x": torch.arange(3)}, tmp_path / "src")
    url = _url("dst")
    cases: list[tuple[list[str], str]] = [
        (["inspect", str(tmp_path / "src"), "--storage-option", "anon=true"], "PATH"),
        (["verify", "s3:/bucket/x", "--storage-option", "anon=true"], "PATH 's3:/bucket/x'"),
        (["convert", str(tmp_path / "src"), str(tmp_path / "out"), "--storage-option", "anon=true"],
         "SRC"),
        (["convert", str(tmp_path / "src"), url, "--src-storage-option", "anon=true"], "SRC"),
        (["convert", url, str(tmp_path / "out"), "--dst-storage-option", "anon=true"], "DST"),
    ]
    for argv, names in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        flag = next(a for a in argv if a.startswith("--"))
        assert err.startswith(f"reshard {argv[0]}: {flag} applies only to fsspec URLs"), err
        assert names in err and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == ["src"]
    with pytest.raises(reshard.CheckpointNotFoundError):
        reshard.open(url)


def _cache_options(cache: Path) -> list[str]:
    return ["--storage-option", "simplecache=" + json.dumps({"cache_storage": str(cache)})]


def test_inspect_and_verify_pass_options_to_fsspec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JSON object option on the command line reaches fsspec: simplecache::memory://
    reads through a cache folder named by the option, which fills with the files read."""
    url = _url("ck")
    reshard.save({"w": torch.arange(12.0).reshape(3, 4), "step": 7}, url)
    for command in ("inspect", "verify"):
        cache = tmp_path / f"cache-{command}"
        assert main([command, f"simplecache::{url}", *_cache_options(cache)]) == 0
        out = capsys.readouterr().out
        assert ("w" in out and "[3, 4]" in out) if command == "inspect" else "intact" in out.lower()
        assert len(os.listdir(cache)) >= 1 + (command == "verify"), os.listdir(cache)
    # The same option given twice is refused even where the two values agree.
    twice = _cache_options(tmp_path / "c") * 2
    argv = ["inspect", f"simplecache::{url}", *twice]
    assert main(argv) == 2 and "'simplecache' given twice" in capsys.readouterr().err


def test_a_bad_option_is_a_failure_naming_the_url(capsys: pytest.CaptureFixture[str]) -> None:
    """An option the filesystem rejects is exit 1 naming the URL (the library's error), as
    an option's VALUE of the wrong type is."""
    url = _url("ck")
    reshard.save({"w": torch.arange(2)}, url)
    argv = ["inspect", f"simplecache::{url}", "--storage-option", "simplecache=5"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("reshard inspect: ") and url in err and err.count("\n") == 1, err


def _memory_put(url: str, local: Path) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{root}/{path.relative_to(local).as_posix()}", path.read_bytes())


def test_convert_from_and_to_urls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every kind of SRC read from a URL (reshard, DCP, a .safetensors file, an HF index
    file, a folder of shards) to local safetensors and reshard output, and a local SRC to
    a reshard DST URL; every value read back exactly. The options given for one side reach
    only that side (SRC's cache fills, DST's does not, and the reverse)."""
    import warnings

    import torch.distributed.checkpoint as dcp

    st = pytest.importorskip("safetensors.torch")
    load_file, save_file = st.load_file, st.save_file

    full = {"w": torch.arange(24, dtype=torch.float32).reshape(4, 6), "b": torch.arange(5)}
    local = tmp_path / "local"
    reshard.save(full, local / "reshard")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group
        dcp.save(dict(full), checkpoint_id=str(local / "dcp"))
    (local / "st").mkdir()
    save_file(full, str(local / "st" / "one.safetensors"))
    assert main(["convert", str(local / "reshard"), str(local / "shards"), "--max-shard-size", "40",
                 "--quiet"]) == 0
    capsys.readouterr()
    base = _url("src")
    _memory_put(base, local)
    sources = {
        "reshard": f"{base}/reshard", "dcp": f"{base}/dcp", "file": f"{base}/st/one.safetensors",
        "index": f"{base}/shards/model.safetensors.index.json", "shards": f"{base}/shards",
    }
    for kind, src in sources.items():
        cache_src = tmp_path / f"cache-{kind}"
        out = tmp_path / f"{kind}.safetensors"
        argv = ["convert", f"simplecache::{src}", str(out), "--quiet",
                "--src-storage-option", "simplecache=" + json.dumps({"cache_storage": str(cache_src)})]
        assert main(argv) == 0, (argv, capsys.readouterr().err)
        assert capsys.readouterr().out.strip() == str(out)
        got = load_file(str(out))
        assert got.keys() == full.keys() and all(torch.equal(got[k], v) for k, v in full.items()), kind
        assert os.listdir(cache_src), kind

        dst = _url(f"out-{kind}")
        cache_dst = tmp_path / f"cache-dst-{kind}"
        argv = ["convert", src, f"simplecache::{dst}", "--quiet", "--codec", "zstd",
                *_cache_options(cache_dst)]
        assert main(argv) == 0, (argv, capsys.readouterr().err)
        assert capsys.readouterr().out.strip() == f"simplecache::{dst}"
        with reshard.open(dst) as ck:
            for k, v in full.items():
                assert torch.equal(ck.read(k), v), (kind, k)
        assert reshard.verify(dst).intact

    # --dst-storage-option reaches DST only: SRC is local, so --storage-option would do too.
    dst, cache = _url("from-local"), tmp_path / "cache-from-local"
    argv = ["convert", str(local / "reshard"), f"simplecache::{dst}", "--quiet",
            "--dst-storage-option", "simplecache=" + json.dumps({"cache_storage": str(cache)})]
    assert main(argv) == 0, capsys.readouterr().err
    with reshard.open(dst) as ck:
        assert torch.equal(ck.read("w"), full["w"])


def test_side_options_override_shared_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--src-storage-option K=...`` wins over ``--storage-option K=...`` for SRC; DST
    keeps the shared one."""
    src, dst = _url("src"), _url("dst")
    reshard.save({"w": torch.arange(6.0)}, src)
    shared, own = tmp_path / "shared", tmp_path / "own"
    argv = ["convert", f"simplecache::{src}", f"simplecache::{dst}", "--quiet",
            *_cache_options(shared),
            "--src-storage-option", "simplecache=" + json.dumps({"cache_storage": str(own)})]
    assert main(argv) == 0, capsys.readouterr().err
    assert os.listdir(own)  # SRC read through its own cache
    with reshard.open(dst) as ck:
        assert torch.equal(ck.read("w"), torch.arange(6.0))


def test_convert_to_a_url_refuses_what_is_there_and_cleans_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reshard DST URL under which something is stored is refused (its manifest would be
    replaced without a word); a conversion failing half-way (a damaged SRC frame) leaves
    no data file behind, so that the same command can be run again."""
    import fsspec

    dst = _url("dst")
    reshard.save({"x": torch.arange(4)}, tmp_path / "src")
    assert main(["convert", str(tmp_path / "src"), dst, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "src"), dst, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert dst in err and "manifest.json" in err and "nothing is stored yet" in err, err

    reshard.save({"a": torch.arange(3), "big": torch.arange(4096.0)}, tmp_path / "damaged")
    with reshard.open(tmp_path / "damaged") as ck:
        last = ck.manifest.entries[-1]  # converted last: the first is written before it fails
        chunk = last.chunks[0]  # type: ignore[attr-defined]
    data = tmp_path / "damaged" / chunk.file
    raw = bytearray(data.read_bytes())
    raw[chunk.offset + 1] ^= 0xFF
    data.write_bytes(bytes(raw))
    dst2 = _url("dst2")
    assert main(["convert", str(tmp_path / "damaged"), dst2, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "CRC-32C" in err and f"key {'.'.join(last.key)!r}" in err, err
    fs, root = fsspec.core.url_to_fs(dst2)
    assert not fs.exists(root) or not fs.find(root), fs.find(root)
    with pytest.raises(reshard.CheckpointNotFoundError):
        reshard.open(dst2)


def test_help_texts_name_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    for command, flags in FLAGS.items():
        assert main([command, "--help"]) == 0
        out = capsys.readouterr().out
        for flag in flags:
            assert f"{flag} KEY=VALUE" in out, (command, flag)
        assert "JSON" in out, command


def test_a_failed_commit_to_a_url_removes_the_data_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The data file is complete and stored when the manifest cannot be made: it is
    deleted, and the DST URL is empty again (the same command can be run again)."""
    import fsspec

    from reshard.errors import StorageError
    from reshard.interop import convert as convert_module

    def fail(source: object) -> str:
        raise StorageError("injected: the manifest cannot be written")

    reshard.save({"x": torch.arange(4000)}, tmp_path / "src")
    dst = _url("dst")
    fs, root = fsspec.core.url_to_fs(dst)
    with monkeypatch.context() as m:
        m.setattr(convert_module, "_library_version", fail)
        written: list[str] = []
        real_close = convert_module._Framer.end_chunk

        def end_chunk(self: Any) -> Any:
            written.append("chunk")
            return real_close(self)

        m.setattr(convert_module._Framer, "end_chunk", end_chunk)
        assert main(["convert", str(tmp_path / "src"), dst, "--quiet"]) == 1
    assert "injected" in capsys.readouterr().err and written
    assert not fs.exists(root) or not fs.find(root), fs.find(root)
    assert main(["convert", str(tmp_path / "src"), dst, "--quiet"]) == 0
    with reshard.open(dst) as ck:
        assert torch.equal(ck.read("x"), torch.arange(4000))


def test_convert_url_dst_holding_folders_or_equal_to_src_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A prefix holding only other checkpoints' folders is not a new DST (the store's file
    listing saw nothing there, and the output was written around them); SRC and DST that
    name one place however spelt are refused as the same path. Nothing is written."""
    import fsspec

    base = _url("runs")
    reshard.save({"w": torch.arange(3)}, f"{base}/step-1")
    fs, root = fsspec.core.url_to_fs(base)
    before = sorted(fs.find(root))
    assert main(["convert", f"{base}/step-1", base, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"DST {base} holds step-1" in err, err
    for dst in (f"{base}/step-1/", base.replace("memory://", "memory:///") + "/step-1"):
        assert main(["convert", f"{base}/step-1", dst, "--quiet"]) == 1
        assert "SRC and DST are the same path" in capsys.readouterr().err, dst
    assert sorted(fs.find(root)) == before


def test_convert_missing_or_damaged_url_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """As for local paths: a URL naming a file or folder that holds nothing is exit 3
    ("no checkpoint at SRC": a missing .safetensors file was exit 1, as if damaged); an
    index naming a shard that is missing, and a file that is not safetensors, exit 1."""
    import fsspec

    base = _url("src")
    fs, root = fsspec.core.url_to_fs(base)
    fs.pipe_file(f"{root}/bad/x.safetensors", b"garbage")
    fs.pipe_file(f"{root}/idx/model.safetensors.index.json",
                 json.dumps({"weight_map": {"w": "model-00001-of-00001.safetensors"}}).encode())
    for i in (1, 3):  # a shard set cut short, without its index
        fs.pipe_file(f"{root}/cut/model-0000{i}-of-00003.safetensors", b"garbage")
    out = tmp_path / "out"
    for src, code, says in (
        (f"{base}/missing.safetensors", 3, "no checkpoint at"),
        (f"{base}/none/model.safetensors.index.json", 3, "no checkpoint at"),
        (f"{base}/empty", 3, "no checkpoint at"),
        (f"{base}/bad/x.safetensors", 1, "too short"),
        (f"{base}/bad", 1, "too short"),
        (f"{base}/idx/model.safetensors.index.json", 1, "model-00001-of-00001.safetensors"),
        (f"{base}/idx", 1, "model-00001-of-00001.safetensors"),
        (f"{base}/cut", 1, "model-00002-of-00003.safetensors is missing"),
    ):
        assert main(["convert", src, str(out), "--quiet"]) == code, (src, capsys.readouterr().err)
        err = capsys.readouterr().err
        assert src.rsplit("/", 1)[0] in err and says in err and err.count("\n") == 1, (src, err)
        assert not out.exists()
