"""End-to-end tests of radar_gguf.hub against a local fake of the Hugging Face hub (tests/hub_server.py).

huggingface_hub reads HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE... once, at import time. So every resolution
that touches the hub runs in a fresh Python subprocess whose environment (set here with monkeypatch) points
at the fake hub and at a per-test HF_HOME: the module is exercised from the outside, as a user would.
Pure helpers (spec parsing, local paths) are tested in-process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

HERE = Path(__file__).resolve().parent
HUB_PY = HERE.parent / "radar_gguf" / "hub.py"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from hub_server import FakeHub  # noqa: E402


def _load_hub_module():
    """Load radar_gguf/hub.py by path: no package __init__ (which may need the native build) is involved."""
    spec = importlib.util.spec_from_file_location("radar_gguf_hub_under_test", HUB_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


rhub = _load_hub_module()


def gguf(name: str, size: int = 64) -> bytes:
    """A small fake GGUF payload, distinct per name (content is not parsed here)."""
    seed = hashlib.sha256(name.encode()).digest()
    return b"GGUF" + (seed * (size // len(seed) + 1))[:size]


REPOS = {
    "acme/llama-GGUF": {
        "README.md": b"# llama GGUF\n",
        ".gitattributes": b"*.gguf filter=lfs diff=lfs merge=lfs -text\n",
        "llama-Q2_K.gguf": gguf("q2"),
        "llama-Q4_K_M.gguf": gguf("q4km", 300),
        "llama-Q8_0.gguf": gguf("q8"),
        "sub/llama-IQ4_XS.gguf": gguf("iq4xs"),
        "mmproj-llama-F16.gguf": gguf("mmproj"),
    },
    "acme/single-GGUF": {
        "README.md": b"one model\n",
        "single-Q4_0.gguf": gguf("single"),
        "mmproj-F16.gguf": gguf("single-mmproj"),
    },
    "acme/split-GGUF": {
        **{f"Q4_K_M/split-Q4_K_M-{i:05d}-of-00003.gguf": gguf(f"shard{i}", 100 + i) for i in (1, 2, 3)},
        "split-Q8_0.gguf": gguf("split-q8"),
    },
    "acme/broken-split-GGUF": {
        "broken-Q4_K_M-00001-of-00003.gguf": gguf("b1"),
        "broken-Q4_K_M-00003-of-00003.gguf": gguf("b3"),
    },
    "acme/ambiguous-GGUF": {
        "base-Q4_K_M.gguf": gguf("base"),
        "instruct-Q4_K_M.gguf": gguf("instruct"),
    },
    "acme/safetensors-only": {
        "config.json": b"{}",
        "model.safetensors": b"\x00" * 32,
        "README.md": b"not gguf\n",
    },
    "acme/evil-GGUF": {
        "../../evil-Q4_K_M.gguf": gguf("evil"),
        "ok-Q8_0.gguf": gguf("ok"),
    },
    "acme/private-GGUF": {"private-Q4_K_M.gguf": gguf("private")},
    "acme/gated-GGUF": {"gated-Q4_K_M.gguf": gguf("gated")},
}
TOKEN = "hf_fake_test_token"
PRIVATE = {"acme/private-GGUF": TOKEN}
GATED = {"acme/gated-GGUF": TOKEN}

RUNNER = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("radar_gguf_hub", sys.argv[1])
hub = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = hub
spec.loader.exec_module(hub)
args = json.loads(sys.argv[2])
results = []
for model in args["specs"]:
    try:
        paths = hub.resolve_model(model, progress=args["progress"])
        results.append({"ok": True, "paths": [str(p) for p in paths]})
    except hub.HubError as e:
        results.append({"ok": False, "type": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__],
                        "message": str(e)})
print("RESULTS " + json.dumps({"results": results, "hf_imported": "huggingface_hub" in sys.modules}))
"""


@dataclass
class Result:
    ok: bool
    paths: list = field(default_factory=list)
    type: str = ""
    mro: list = field(default_factory=list)
    message: str = ""

    def is_error(self, name: str) -> bool:
        return not self.ok and name in self.mro


@dataclass
class Run:
    results: list
    stderr: str
    hf_imported: bool


def run_resolve(*specs: str, progress: bool = False, env: dict | None = None) -> Run:
    """Resolve ``specs`` in a fresh interpreter using the current (monkeypatched) environment."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(HUB_PY), json.dumps({"specs": list(specs), "progress": progress})],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, (
        f"resolver crashed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
    payload = json.loads(lines[-1][len("RESULTS ") :])
    return Run([Result(**r) for r in payload["results"]], proc.stderr, payload["hf_imported"])


def resolve_one(spec: str, **kwargs) -> Result:
    return run_resolve(spec, **kwargs).results[0]


@pytest.fixture
def hub():
    with FakeHub(REPOS, private=PRIVATE, gated=GATED) as server:
        yield server


@dataclass
class HFEnv:
    home: Path
    cache: Path

    def snapshot(self, repo_id: str, sha: str) -> Path:
        return self.cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / sha


def _isolated_hf_env(monkeypatch, tmp_path: Path, endpoint: str) -> HFEnv:
    for key in list(os.environ):
        if key.startswith(("HF_", "HUGGINGFACE_", "HUGGING_FACE_")) or key in (
            "TRANSFORMERS_OFFLINE",
            "TQDM_POSITION",
        ):
            monkeypatch.delenv(key, raising=False)
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_UPDATE_CHECK", "1")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    return HFEnv(home, home / "hub")


@pytest.fixture
def hf_env(monkeypatch, tmp_path, hub) -> HFEnv:
    return _isolated_hf_env(monkeypatch, tmp_path, hub.url)


def served_paths(hub: FakeHub, *, methods=("GET", "HEAD")) -> list[str]:
    return [unquote(urlsplit(r.path).path) for r in hub.requests if r.method in methods]


def downloaded_names(hub: FakeHub) -> set[str]:
    return {unquote(urlsplit(r.path).path).rsplit("/", 1)[-1] for r in hub.downloads()}


# ------------------------------------------------------------------------------------------------------------
# hub resolution, end to end
# ------------------------------------------------------------------------------------------------------------


def test_quant_tag_picks_that_file_case_insensitively(hub, hf_env):
    res = resolve_one("acme/llama-GGUF:q4_k_m")
    assert res.ok, res.message
    (path,) = map(Path, res.paths)
    assert path.name == "llama-Q4_K_M.gguf"
    assert path.parent == hf_env.snapshot("acme/llama-GGUF", hub.sha("acme/llama-GGUF"))
    assert path.read_bytes() == REPOS["acme/llama-GGUF"]["llama-Q4_K_M.gguf"]
    assert downloaded_names(hub) == {"llama-Q4_K_M.gguf"}  # only the chosen quant was fetched


def test_file_spec_also_in_subfolder_and_url_forms(hub, hf_env):
    run = run_resolve(
        "acme/llama-GGUF/sub/llama-IQ4_XS.gguf",
        "acme/llama-GGUF/llama-Q8_0.gguf",
        "hf://acme/llama-GGUF/llama-Q2_K.gguf",
        f"https://huggingface.co/acme/llama-GGUF/resolve/{hub.sha('acme/llama-GGUF')}/llama-Q2_K.gguf",
    )
    sub, q8, q2, q2_url = run.results
    assert all(r.ok for r in run.results), [r.message for r in run.results]
    snapshot = hf_env.snapshot("acme/llama-GGUF", hub.sha("acme/llama-GGUF"))
    assert sub.paths == [str(snapshot / "sub" / "llama-IQ4_XS.gguf")]
    assert Path(sub.paths[0]).read_bytes() == REPOS["acme/llama-GGUF"]["sub/llama-IQ4_XS.gguf"]
    assert Path(q8.paths[0]).read_bytes() == REPOS["acme/llama-GGUF"]["llama-Q8_0.gguf"]
    assert q2.paths == q2_url.paths == [str(snapshot / "llama-Q2_K.gguf")]


def test_repo_with_a_single_gguf_model(hub, hf_env):
    res = resolve_one("acme/single-GGUF")
    assert res.ok, res.message
    assert [Path(p).name for p in res.paths] == ["single-Q4_0.gguf"]  # the mmproj projector is not a model
    assert Path(res.paths[0]).read_bytes() == REPOS["acme/single-GGUF"]["single-Q4_0.gguf"]


def test_split_gguf_gets_all_shards_in_one_directory(hub, hf_env):
    run = run_resolve("acme/split-GGUF:Q4_K_M", "acme/split-GGUF/Q4_K_M/split-Q4_K_M-00002-of-00003.gguf")
    by_tag, by_shard = run.results
    assert by_tag.ok, by_tag.message
    assert by_shard.paths == by_tag.paths
    paths = [Path(p) for p in by_tag.paths]
    assert [p.name for p in paths] == [f"split-Q4_K_M-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    assert {p.parent for p in paths} == {
        hf_env.snapshot("acme/split-GGUF", hub.sha("acme/split-GGUF")) / "Q4_K_M"
    }
    for path in paths:  # what llama.cpp does: open shard 1, find the others by name next to it
        assert path.read_bytes() == REPOS["acme/split-GGUF"][f"Q4_K_M/{path.name}"]
    assert downloaded_names(hub) == {p.name for p in paths}


# All error cases resolve in one subprocess (interpreter start-up dominates the run time); each test below
# checks one of them. None of them may download anything.
ERROR_SPECS = {
    "incomplete": "acme/broken-split-GGUF:Q4_K_M",
    "several": "acme/llama-GGUF",
    "ambiguous": "acme/ambiguous-GGUF:Q4_K_M",
    "unknown_quant": "acme/llama-GGUF:Q5_K_M",
    "quant_prefix": "acme/llama-GGUF:Q4_K",  # must not match Q4_K_M
    "missing_file": "acme/llama-GGUF/nope.gguf",
    "no_gguf": "acme/safetensors-only",
    "unknown_repo": "acme/does-not-exist",
    "private": "acme/private-GGUF",
    "gated": "acme/gated-GGUF",
    "bad_revision": "acme/llama-GGUF@no-such-branch:Q8_0",
    "traversal": "acme/evil-GGUF:Q8_0",
}


@dataclass
class ErrorRun:
    results: dict
    hub: FakeHub
    tmp: Path


@pytest.fixture(scope="module")
def errors(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors")
    with FakeHub(REPOS, private=PRIVATE, gated=GATED) as hub, pytest.MonkeyPatch.context() as mp:
        _isolated_hf_env(mp, tmp, hub.url)
        run = run_resolve(*ERROR_SPECS.values())
    return ErrorRun(dict(zip(ERROR_SPECS, run.results)), hub, tmp)


def test_error_cases_download_nothing(errors):
    assert all(not r.ok for r in errors.results.values()), errors.results
    assert not errors.hub.downloads()


def test_incomplete_split_set_is_refused(errors):
    res = errors.results["incomplete"]
    assert res.is_error("IncompleteSplitError"), res
    assert "broken-Q4_K_M-00002-of-00003.gguf" in res.message


def test_several_models_without_tag_lists_the_choices(errors):
    res = errors.results["several"]
    assert res.is_error("AmbiguousModelError"), res
    for quant in ("Q2_K", "Q4_K_M", "Q8_0", "IQ4_XS"):
        assert f"acme/llama-GGUF:{quant} " in res.message
    assert "acme/llama-GGUF:QUANT" in res.message
    assert "mmproj" not in res.message


def test_ambiguous_quant_lists_the_matching_files(errors):
    res = errors.results["ambiguous"]
    assert res.is_error("AmbiguousModelError"), res
    assert "acme/ambiguous-GGUF/base-Q4_K_M.gguf" in res.message
    assert "acme/ambiguous-GGUF/instruct-Q4_K_M.gguf" in res.message


@pytest.mark.parametrize("case", ["unknown_quant", "quant_prefix"])
def test_unknown_quant_lists_the_available_ones(errors, case):
    res = errors.results[case]
    assert res.is_error("QuantNotFoundError"), res
    assert "acme/llama-GGUF:Q4_K_M " in res.message and "acme/llama-GGUF:Q8_0 " in res.message


def test_missing_file_lists_the_gguf_files(errors):
    res = errors.results["missing_file"]
    assert res.is_error("GGUFFileNotFoundError"), res
    assert "nope.gguf" in res.message and "sub/llama-IQ4_XS.gguf" in res.message


def test_repo_without_gguf(errors):
    res = errors.results["no_gguf"]
    assert res.is_error("NoGGUFError"), res
    assert "model.safetensors" in res.message


def test_unknown_repo_mentions_hf_token(errors):
    res = errors.results["unknown_repo"]
    assert res.is_error("RepoNotFoundError"), res
    assert "acme/does-not-exist" in res.message and "HF_TOKEN" in res.message


def test_private_and_gated_repos_without_token(errors):
    private, gated = errors.results["private"], errors.results["gated"]
    assert private.is_error("RepoNotFoundError") and "HF_TOKEN" in private.message, private
    assert gated.is_error("GatedRepoError") and "HF_TOKEN" in gated.message, gated
    assert "license" in gated.message


def test_private_and_gated_repos_with_hf_token(hub, hf_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    private, gated = run_resolve("acme/private-GGUF", "acme/gated-GGUF").results
    assert private.ok and gated.ok, (private, gated)
    assert Path(private.paths[0]).read_bytes() == REPOS["acme/private-GGUF"]["private-Q4_K_M.gguf"]
    assert Path(gated.paths[0]).read_bytes() == REPOS["acme/gated-GGUF"]["gated-Q4_K_M.gguf"]


def test_unknown_revision(errors):
    res = errors.results["bad_revision"]
    assert res.is_error("RevisionNotFoundError") and "no-such-branch" in res.message, res


def test_path_traversal_listed_by_the_server_is_refused(errors):
    res = errors.results["traversal"]
    assert res.is_error("UnsafeFilenameError"), res
    assert "../../evil-Q4_K_M.gguf" in res.message and "path traversal" in res.message
    evil = [r.path for r in errors.hub.requests if "evil" in r.path and "/api/" not in r.path]
    assert not evil  # no HEAD/GET of any file of that repo
    assert not list(errors.tmp.rglob("evil*"))


def test_revision_pin(hub, hf_env):
    sha = hub.sha("acme/llama-GGUF")
    res = resolve_one(f"acme/llama-GGUF:Q8_0@{sha}")
    assert res.ok, res.message
    assert res.paths == [str(hf_env.snapshot("acme/llama-GGUF", sha) / "llama-Q8_0.gguf")]


def test_interrupted_transfer_resumes_with_range_and_bytes_are_exact(monkeypatch, tmp_path):
    # huggingface_hub writes the stream in 10 MiB chunks: cut after the first one so the retry must resume
    payload = b"GGUF" + random.Random(1234).randbytes(10 * 1024 * 1024 + 300_000)
    with FakeHub({"acme/big-GGUF": {"big-Q4_K_M.gguf": payload}}) as hub:
        hf_env = _isolated_hf_env(monkeypatch, tmp_path, hub.url)
        cut_at = 10 * 1024 * 1024 + 12_345
        hub.cut_next_download(cut_at, "big-Q4_K_M.gguf")
        res = resolve_one("acme/big-GGUF:Q4_K_M")
        assert res.ok, res.message
        path = Path(res.paths[0])
        assert path.parent == hf_env.snapshot("acme/big-GGUF", hub.sha("acme/big-GGUF"))
        data = path.read_bytes()
        assert len(data) == len(payload) and data == payload
        first, second = hub.downloads("big-Q4_K_M.gguf")
        assert "Range" not in first.headers
        assert second.headers.get("Range") == f"bytes={10 * 1024 * 1024}-"  # resumed, not restarted
        assert second.status == 206


def test_offline_with_warm_cache_makes_no_request(hub, hf_env):
    specs = (
        "acme/llama-GGUF:Q4_K_M",
        "acme/split-GGUF:q4_k_m",
        "acme/llama-GGUF/sub/llama-IQ4_XS.gguf",
        "acme/single-GGUF",
        f"acme/llama-GGUF:Q4_K_M@{hub.sha('acme/llama-GGUF')}",
    )
    online = run_resolve(*specs)
    assert all(r.ok for r in online.results), [r.message for r in online.results]
    hub.clear_requests()

    offline = run_resolve(*specs, env={"HF_HUB_OFFLINE": "1"})
    assert [r.paths for r in offline.results] == [r.paths for r in online.results]
    assert hub.request_count == 0, served_paths(hub)


def test_offline_with_cold_cache_explains_the_fix(hub, hf_env):
    assert resolve_one("acme/llama-GGUF:Q4_K_M").ok  # warm one quant of one repo
    hub.clear_requests()
    cold_repo, other_quant = run_resolve(
        "acme/single-GGUF", "acme/llama-GGUF:Q8_0", env={"HF_HUB_OFFLINE": "1"}
    ).results
    assert hub.request_count == 0, served_paths(hub)
    assert cold_repo.is_error("OfflineCacheMissError"), cold_repo
    assert "HF_HUB_OFFLINE" in cold_repo.message and "acme/single-GGUF" in cold_repo.message
    assert "not in the local cache" in cold_repo.message
    assert other_quant.is_error("OfflineCacheMissError"), other_quant
    assert "HF_HUB_OFFLINE" in other_quant.message
    assert "acme/llama-GGUF:Q4_K_M " in other_quant.message  # what the cache does have


def test_unreachable_hub_falls_back_to_the_cache(hub, hf_env):
    assert resolve_one("acme/llama-GGUF:Q4_K_M").ok
    hub.stop()
    warm, cold = run_resolve("acme/llama-GGUF:Q4_K_M", "acme/single-GGUF").results
    assert warm.ok, warm.message
    assert cold.is_error("HubConnectionError"), cold
    assert "not in the local cache" in cold.message


def test_progress_bar_shown_or_hidden(hub, hf_env, monkeypatch):
    monkeypatch.setenv("TQDM_POSITION", "-1")  # huggingface_hub only draws bars on a TTY unless forced
    shown = run_resolve("acme/llama-GGUF:Q2_K", progress=True)
    assert shown.results[0].ok
    assert "llama-Q2_K.gguf" in shown.stderr and "100%" in shown.stderr
    hidden = run_resolve("acme/llama-GGUF:Q8_0", progress=False)
    assert hidden.results[0].ok
    assert "100%" not in hidden.stderr


def _closed_port() -> int:
    with socket.socket() as sock:  # bound, never listening: connections to it are refused
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("offline", [False, True], ids=["hub-unreachable", "HF_HUB_OFFLINE"])
def test_cli_gives_one_error_line_without_traceback(monkeypatch, tmp_path, offline):
    """`python -m radar_gguf.run user/repo:QUANT` on a machine without network: one line, exit 1."""
    _isolated_hf_env(monkeypatch, tmp_path, f"http://127.0.0.1:{_closed_port()}")
    env = {**os.environ, "PYTHONPATH": str(HUB_PY.parents[1])}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "radar_gguf.run", "acme/llama-GGUF:Q4_K_M", "-p", "hi"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "No module named" in proc.stderr:
        pytest.skip(f"radar_gguf.run cannot start here: {proc.stderr.strip().splitlines()[-1]}")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and "acme/llama-GGUF:Q4_K_M is not in the local cache" in line
    assert ("HF_HUB_OFFLINE" if offline else "Cannot reach the hub") in line


# ------------------------------------------------------------------------------------------------------------
# in-process: parsing and local paths
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("model.gguf", True),
        ("models/model.gguf", True),
        ("./a/b/model.gguf", True),
        ("/abs/path/model.gguf", True),
        ("~/models/m.gguf", True),
        ("C:\\models\\m.gguf", True),
        ("user/repo", False),
        ("user/repo:Q4_K_M", False),
        ("user/repo/file.gguf", False),
        ("user/repo/sub/file.gguf", False),
        ("hf://user/repo/file.gguf", False),
        ("", False),
    ],
)
def test_is_local_path(spec, expected):
    assert rhub.is_local_path(spec) is expected


def test_existing_path_is_local_even_if_it_looks_like_a_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user" / "repo").mkdir(parents=True)
    assert rhub.is_local_path("user/repo")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("user/repo", ("user/repo", None, None, None)),
        ("user/repo:Q4_K_M", ("user/repo", None, "Q4_K_M", None)),
        ("user/repo:q4_k_m@dev", ("user/repo", None, "q4_k_m", "dev")),
        ("user/repo@v1.0:Q8_0", ("user/repo", None, "Q8_0", "v1.0")),
        ("user/repo@refs/pr/1", ("user/repo", None, None, "refs/pr/1")),
        ("user/repo/file.gguf", ("user/repo", "file.gguf", None, None)),
        ("user/repo/sub/dir/file.gguf@abc", ("user/repo", "sub/dir/file.gguf", None, "abc")),
        ("hf://user/repo:Q2_K", ("user/repo", None, "Q2_K", None)),
        ("https://huggingface.co/user/repo", ("user/repo", None, None, None)),
        ("https://huggingface.co/user/repo/blob/main/f.gguf", ("user/repo", "f.gguf", None, "main")),
    ],
)
def test_parse_model_spec(spec, expected):
    assert tuple(rhub.parse_model_spec(spec)) == expected


@pytest.mark.parametrize(
    "spec", ["user", "user/repo:", "user/repo/README.md", "user/repo@a:Q4@b", "a/b/c d e"]
)
def test_parse_model_spec_rejects_garbage(spec):
    with pytest.raises(rhub.InvalidModelSpecError, match="user/repo"):
        rhub.parse_model_spec(spec)


@pytest.mark.parametrize(
    "spec",
    [
        "user/repo/../x.gguf",
        "user/repo/sub/../../x.gguf",
        "user/repo/a\\..\\x.gguf",
        "user/repo:Q4_K_M@../../x",
    ],
)
def test_user_given_traversal_is_refused(spec):
    with pytest.raises(rhub.UnsafeFilenameError, match="path traversal"):
        rhub.parse_model_spec(spec)


def test_local_file_split_and_directory(tmp_path):
    single = tmp_path / "m-Q4_K_M.gguf"
    single.write_bytes(b"GGUF")
    assert rhub.resolve_model(str(single)) == [single]

    split_dir = tmp_path / "split"
    split_dir.mkdir()
    shards = [split_dir / f"m-{i:05d}-of-00002.gguf" for i in (1, 2)]
    for shard in shards:
        shard.write_bytes(b"GGUF")
    assert rhub.resolve_model(str(shards[1])) == shards
    assert rhub.resolve_model(str(split_dir)) == shards  # a directory holding one (split) model

    shards[1].unlink()
    with pytest.raises(rhub.IncompleteSplitError, match="00002-of-00002"):
        rhub.resolve_model(str(shards[0]))
    with pytest.raises(rhub.LocalModelNotFoundError, match="No such file"):
        rhub.resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(rhub.AmbiguousModelError):
        (tmp_path / "other.gguf").write_bytes(b"GGUF")
        rhub.resolve_model(str(tmp_path))


def _pick(names, quant=None, filename=None):
    def spec_of(quant=None, filename=None):
        return f"u/r/{filename}" if filename else f"u/r:{quant}"

    return rhub._select(
        names, quant=quant, filename=filename, spec_of=spec_of, where="u/r", incomplete_fix="fix"
    ).files


def test_selection_rules():
    names = ["m-Q4_K_XL.gguf", "m-UD-Q4_K_XL.gguf", "mmproj-m-F16.gguf", "README.md"]
    assert _pick(names, quant="q4_k_xl") == ("m-Q4_K_XL.gguf",)  # the exact label wins over UD-Q4_K_XL
    assert _pick(names, quant="UD-Q4_K_XL") == ("m-UD-Q4_K_XL.gguf",)
    assert _pick(names, filename="mmproj-m-F16.gguf") == ("mmproj-m-F16.gguf",)  # by name, aux files are ok
    with pytest.raises(rhub.QuantNotFoundError):
        _pick(names, quant="F16")  # ...but a projector is never picked as "the model"
    # the quant tag may sit in a folder name only; shards are returned in order whatever the listing order
    shards = ["Q8_0/m-00002-of-00002.gguf", "Q8_0/m-00001-of-00002.gguf", "Q4_0/m.gguf"]
    assert _pick(shards, quant="Q8_0") == ("Q8_0/m-00001-of-00002.gguf", "Q8_0/m-00002-of-00002.gguf")
    assert _pick(["BF16/m.gguf", "F16/m.gguf"], quant="f16") == ("F16/m.gguf",)  # F16 does not match BF16


def test_local_paths_do_not_import_huggingface_hub(tmp_path, monkeypatch):
    _isolated_hf_env(monkeypatch, tmp_path, "http://127.0.0.1:9")  # nothing listens there
    model = tmp_path / "local-Q4_K_M.gguf"
    model.write_bytes(b"GGUF")
    run = run_resolve(str(model))
    assert run.results[0].paths == [str(model)]
    assert run.hf_imported is False


def test_error_hierarchy():
    for name in rhub.__all__:
        obj = getattr(rhub, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, rhub.HubError)
    assert issubclass(rhub.GatedRepoError, rhub.RepoNotFoundError)
    assert issubclass(rhub.LocalModelNotFoundError, FileNotFoundError)


# ------------------------------------------------------------------------------------------------------------
# downloads that go wrong: the cache must not keep what the hub did not announce


def _cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


@pytest.mark.parametrize(
    "served, why",
    [
        (lambda real: real[:-1000], "shorter"),  # a file of unexpected size
        (lambda real: real + b"\0" * 1000, "longer"),
        (lambda real: real[:100] + b"X" + real[101:], "same size, other bytes"),  # a tampered mirror
    ],
    ids=["short", "long", "tampered"],
)
def test_download_that_does_not_match_the_hub_is_refused_and_removed(monkeypatch, tmp_path, served, why):
    payload = b"GGUF" + random.Random(7).randbytes(300_000)
    with FakeHub({"acme/tamper-GGUF": {"m-Q4_K_M.gguf": payload}}) as hub:
        hf_env = _isolated_hf_env(monkeypatch, tmp_path, hub.url)
        hub.serve_instead("acme/tamper-GGUF", "m-Q4_K_M.gguf", served(payload))
        res = resolve_one("acme/tamper-GGUF:Q4_K_M")
        assert res.is_error("DownloadError"), (why, res)
        assert "m-Q4_K_M.gguf" in res.message
        # nothing that could be mistaken for the model stays in the cache
        left = [p for p in _cache_files(hf_env.home) if "m-Q4_K_M" in p.name or "/blobs/" in str(p)]
        assert all(p.name.endswith(".incomplete") is False for p in left), left
        assert not [p for p in left if p.exists() and p.stat().st_size >= 1000], left
        # the next run, with the mirror fixed, downloads the real file
        hub.served.clear()
        res = resolve_one("acme/tamper-GGUF:Q4_K_M")
        assert res.ok, res.message
        assert Path(res.paths[0]).read_bytes() == payload


def test_cut_transfer_then_resume_leaves_exact_bytes_and_no_partial_file(monkeypatch, tmp_path):
    payload = b"GGUF" + random.Random(3).randbytes(10 * 1024 * 1024 + 5000)
    with FakeHub({"acme/cut-GGUF": {"c-Q8_0.gguf": payload}}) as hub:
        hf_env = _isolated_hf_env(monkeypatch, tmp_path, hub.url)
        hub.cut_next_download(10 * 1024 * 1024 + 10, "c-Q8_0.gguf")
        res = resolve_one("acme/cut-GGUF:Q8_0")
        assert res.ok, res.message
        assert Path(res.paths[0]).read_bytes() == payload
        assert not [p for p in _cache_files(hf_env.home) if p.name.endswith(".incomplete")]
