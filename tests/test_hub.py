"""Pushing to the Hub without a network: huggingface_hub's calls are replaced by recorders that keep
what would have been uploaded, so the exact file set and bytes are checked; the failure messages
(no token, offline mode, no network, refused token) are checked with real huggingface_hub clients."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import HfApi, RepoUrl

from hf_lowdata.cli import main
from hf_lowdata.hub import HubError, files_to_upload, hub_file_contents, push_adapter
from hf_lowdata.workflow import load_classifier, train_method
from tests.cli.outputs import tiny_config, toy_task, trained

ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md"}


class Recorder:
    """Stands in for the Hub: records create_repo / create_commit calls and the uploaded bytes, and keeps
    each repository's files (a new one holds .gitattributes, as on the Hub) for list_repo_files."""

    def __init__(self) -> None:
        self.repos: list[dict] = []
        self.uploads: dict[str, bytes] = {}
        self.commits = 0
        self.files: dict[str, dict[str, bytes]] = {}

    def create_repo(self, api, repo_id, **kwargs):
        self.repos.append({"repo_id": repo_id, **kwargs})
        self.files.setdefault(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def list_repo_files(self, api, repo_id, **kwargs):
        if repo_id not in self.files:
            import httpx
            from huggingface_hub.errors import RepositoryNotFoundError

            request = httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
            raise RepositoryNotFoundError("404 Repository Not Found", response=httpx.Response(404, request=request))
        return sorted(self.files[repo_id])

    def create_commit(self, api, repo_id, operations, **kwargs):
        from huggingface_hub import CommitOperationDelete

        self.commits += 1
        for op in operations:
            if isinstance(op, CommitOperationDelete):
                del self.files[repo_id][op.path_in_repo]  # the Hub refuses to delete a missing file
                continue
            source = op.path_or_fileobj
            data = Path(source).read_bytes() if isinstance(source, str) else bytes(source)
            self.uploads[op.path_in_repo] = self.files[repo_id][op.path_in_repo] = data
        return {"repo_id": repo_id}


@pytest.fixture
def hub(monkeypatch):
    """Online mode with a token, and every Hub call recorded instead of sent."""
    recorder = Recorder()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: recorder.create_repo(self, repo_id, **kw))
    monkeypatch.setattr(HfApi, "create_commit",
                        lambda self, repo_id, operations, **kw: recorder.create_commit(self, repo_id, operations, **kw))
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo_id, **kw: recorder.list_repo_files(self, repo_id, **kw))
    return recorder


@pytest.fixture(scope="module")
def adapter() -> Path:
    return trained("lora").output_dir


def test_push_uploads_exactly_the_adapter_files_and_card_in_one_commit(hub, adapter, capsys):
    assert (adapter / "eval_results.json").is_file()  # kept locally, not uploaded
    assert main(["push", str(adapter), "me/toy-lora", "--private"]) == 0
    assert set(hub.uploads) == ADAPTER_FILES and hub.commits == 1
    for name, data in hub.uploads.items():
        if name != "adapter_config.json":
            assert data == (adapter / name).read_bytes(), name
    # locally the adapter points at the installed package (AutoPeftModel loads it offline here); the
    # uploaded copy names the Hub model instead of this machine's folder, and nothing else changes
    local = json.loads((adapter / "adapter_config.json").read_text())
    uploaded = json.loads(hub.uploads["adapter_config.json"])
    assert Path(local["base_model_name_or_path"]).is_dir()
    assert uploaded == {**local, "base_model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2"}
    assert hub.repos == [{"repo_id": "me/toy-lora", "private": True, "exist_ok": True, "repo_type": "model"}]
    out = capsys.readouterr().out
    assert "Uploaded 3 files" in out and "https://huggingface.co/me/toy-lora" in out
    assert f"adapter_config.json  ({len(hub.uploads['adapter_config.json']):,} bytes)" in out  # the uploaded copy's size


def test_dry_run_lists_the_files_and_contacts_nothing(adapter, monkeypatch, capsys):
    contacted = []  # recorded, not raised: the dry run catches errors of the file listing

    def refuse(*args, **kwargs):
        contacted.append(args)
        raise AssertionError("a dry run must not contact the Hub")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    monkeypatch.setattr(HfApi, "create_commit", refuse)
    monkeypatch.setattr(HfApi, "list_repo_files", refuse)  # offline: not even read
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert main(["push", str(adapter), "me/toy-lora", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "Would upload 3 files" in out
    listed = {line.split()[0] for line in out.splitlines()[1:]}
    assert listed == ADAPTER_FILES
    # offline, it cannot see what an earlier push left in the repository, and says so
    assert "could not read me/toy-lora (offline or unreachable)" in err
    assert push_adapter(adapter, "me/toy-lora", dry_run=True).deleted is None
    assert contacted == []


def test_a_push_leaves_exactly_the_folder_files_in_a_repo_an_earlier_push_filled(hub, adapter, tmp_path, capsys):
    """A push only added files: a probe pushed where a LoRA adapter was left the adapter's files in the repo,
    which then loaded as the old adapter under the probe's card."""
    from hf_lowdata.workflow import card_metadata, output_kind

    probe = trained("probe").output_dir
    push_adapter(adapter, "me/sst2")
    assert set(hub.files["me/sst2"]) == ADAPTER_FILES | {".gitattributes"}
    by_hand = ("confusion.png", "LICENSE.txt", "notes.txt", "results/metrics.json", "examples/inputs.json")
    for name in by_hand:  # not model files: they stay (a suffix rule deleted every .json and .txt)
        hub.files["me/sst2"][name] = b"added by hand"
    adapter_only = ("adapter_config.json", "adapter_model.safetensors")
    # a dry run lists what the push would delete, and changes nothing
    assert main(["push", str(probe), "me/sst2", "--dry-run"]) == 0
    assert "Would delete 2 files of an earlier push that the folder does not hold:\n  adapter_config.json\n" \
           "  adapter_model.safetensors\n" in capsys.readouterr().out
    assert hub.commits == 1
    result = push_adapter(probe, "me/sst2")
    assert hub.commits == 2 and result.deleted == adapter_only
    assert set(hub.files["me/sst2"]) == {".gitattributes", "README.md", "probe_config.json", "probe_head.safetensors",
                                         *by_hand}
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    for name, data in hub.files["me/sst2"].items():
        (downloaded / name).parent.mkdir(parents=True, exist_ok=True)
        (downloaded / name).write_bytes(data)
    assert output_kind(downloaded) == "probe" and card_metadata(downloaded)["method"] == "probe"
    # a new repository: nothing to delete
    assert push_adapter(probe, "me/new-probe", dry_run=True).deleted == ()
    assert push_adapter(probe, "me/new-probe").deleted == ()


def test_inherited_peft_push_to_hub_uploads_the_adapter_files_and_a_card(hub, adapter, monkeypatch):
    import transformers.utils.hub as transformers_hub
    from huggingface_hub.errors import EntryNotFoundError

    from hf_lowdata.workflow import load_classifier

    def new_repo(*args, **kwargs):  # a new repository has no card yet
        raise EntryNotFoundError("no README.md")

    monkeypatch.setattr(transformers_hub.ModelCard, "load", new_repo)
    model = load_classifier(adapter).model
    model.push_to_hub("me/toy-lora-inherited")
    assert set(hub.uploads) == ADAPTER_FILES and hub.commits == 1
    assert hub.uploads["adapter_model.safetensors"] == (adapter / "adapter_model.safetensors").read_bytes()
    assert hub.uploads["README.md"].startswith(b"---")


def test_full_model_and_probe_uploads_skip_local_records(tmp_path):
    for method in ("full", "probe"):
        names = {p.name for p in files_to_upload(trained(method).output_dir)}
        assert "eval_results.json" not in names and "README.md" in names
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in files_to_upload(trained("full").output_dir)}
    assert {p.name for p in files_to_upload(trained("probe").output_dir)} == {
        "probe_head.safetensors", "probe_config.json", "README.md"}


def _hub_cache(root: Path, repo_id: str, model_dir: Path) -> Path:
    """A Hugging Face cache at ``root`` holding ``model_dir`` as ``repo_id``, laid out as a download leaves it."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return root


def test_an_adapter_of_a_cached_hub_model_leaves_naming_the_hub_id_and_loads_elsewhere(tiny_bert_dir, tmp_path,
                                                                                       monkeypatch):
    """A base model given as org/name resolves from the local Hugging Face cache, and the adapter records that
    snapshot's path: the upload kept it (the card said base_model: org/name), so the adapter loaded nowhere else."""
    from huggingface_hub.repocard import metadata_load

    here = _hub_cache(tmp_path / "cache-here", "acme/tiny-bert", tiny_bert_dir)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(here))
    out = train_method("lora", toy_task(), tmp_path / "out", model="acme/tiny-bert", config=tiny_config("lora")).output_dir
    local = json.loads((out / "adapter_config.json").read_text())
    assert "models--acme--tiny-bert/snapshots/" in local["base_model_name_or_path"]  # loads offline here
    assert metadata_load(out / "README.md")["base_model"] == "acme/tiny-bert"
    uploaded = {name: c if isinstance(c, bytes) else c.read_bytes() for name, c in hub_file_contents(out)}
    assert json.loads(uploaded["adapter_config.json"]) == {**local, "base_model_name_or_path": "acme/tiny-bert"}
    # another machine: the same model in another cache, this machine's cache gone
    there = _hub_cache(tmp_path / "cache-there", "acme/tiny-bert", tiny_bert_dir)
    shutil.rmtree(here)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(there))
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    for name, data in uploaded.items():
        (downloaded / name).write_bytes(data)
    assert load_classifier(downloaded).predict_proba(["a fine film"]).shape == (1, 2)


def test_no_token_is_a_clear_message(adapter, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert main(["push", str(adapter), "me/toy-lora"]) == 2
    assert "No Hugging Face token found. Log in with `hf auth login`" in capsys.readouterr().err


def test_offline_mode_is_a_clear_message(adapter, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set, so hf_lowdata does not contact the Hub"):
        push_adapter(adapter, "me/toy-lora", token="hf_test_token")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_is_a_clear_message(adapter, monkeypatch):
    """A real huggingface_hub client against an endpoint where nothing listens."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(HubError) as err:
        push_adapter(adapter, "me/toy-lora", token="hf_test_token", endpoint=endpoint)
    message = str(err.value)
    assert f"Cannot reach the Hugging Face Hub at {endpoint}: no network connection?" in message
    assert "Nothing was uploaded" in message


def test_refused_token_is_a_clear_message(adapter, monkeypatch):
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def unauthorized(self, repo_id, **kwargs):
        response = httpx.Response(401, request=httpx.Request("POST", "https://huggingface.co/api/repos/create"))
        raise HfHubHTTPError("401 Unauthorized", response=response)

    monkeypatch.setattr(HfApi, "create_repo", unauthorized)
    with pytest.raises(HubError, match=r"The Hub refused the token \(HTTP 401\)"):
        push_adapter(adapter, "me/toy-lora", token="hf_bad")


def test_bad_repo_ids_and_damaged_folders_are_refused(adapter, tmp_path):
    with pytest.raises(HubError, match="not a valid repository id"):
        push_adapter(adapter, "no namespace here", dry_run=True)
    with pytest.raises(HubError, match="not a valid repository id"):
        push_adapter(adapter, "just-a-name", dry_run=True)
    damaged = tmp_path / "damaged"
    shutil.copytree(adapter, damaged)
    (damaged / "adapter_model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(HubError, match="damaged or truncated"):
        push_adapter(damaged, "me/toy-lora", dry_run=True)
    pickled = tmp_path / "pickled"
    shutil.copytree(trained("probe").output_dir, pickled)
    (pickled / "head.pkl").write_bytes(b"x")
    with pytest.raises(HubError, match="pickle files"):
        push_adapter(pickled, "me/toy-probe", dry_run=True)
    for name, damage in [("bad_config", lambda f: (f / "adapter_config.json").write_text("{not json")),
                         ("no_card", lambda f: (f / "README.md").unlink())]:
        folder = tmp_path / name
        shutil.copytree(adapter, folder)
        damage(folder)
        with pytest.raises(HubError, match="not valid JSON" if name == "bad_config" else "has no README.md model card"):
            push_adapter(folder, "me/toy-lora", dry_run=True)  # a dry run checks what a push would upload
    headless = tmp_path / "headless"
    shutil.copytree(trained("probe").output_dir, headless)
    (headless / "probe_head.safetensors").unlink()
    with pytest.raises(HubError, match="without probe_head.safetensors"):
        push_adapter(headless, "me/toy-probe", dry_run=True)


def test_only_files_of_a_saved_model_count_as_stale():
    from hf_lowdata.hub import _is_model_file

    model_files = ["adapter_config.json", "adapter_model.safetensors", "model-00001-of-00002.safetensors",
                   "tokenizer.json", "vocab.txt", "probe_config.json", "pytorch_model.bin", "body/config.json",
                   "body/1_Pooling/config.json", "1_Pooling/config.json", "modules.json"]
    users = ["LICENSE.txt", "requirements.txt", "notes.txt", "results/metrics.json", "eval_results.json",
             "examples/sample_inputs.json", "confusion.png", "README_de.md"]
    assert [n for n in model_files if not _is_model_file(n)] == [] and [n for n in users if _is_model_file(n)] == []


def _two_adapter_folder(folder: Path, names: tuple[str, ...] = ("default", "other")) -> Path:
    """A PEFT folder as ``save_pretrained`` writes it for a model with several adapters (the others in sub-folders)."""
    import torch
    from peft import get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    from hf_lowdata import FTPConfig

    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32,
                                                    max_position_embeddings=32))
    model = get_peft_model(base, FTPConfig(task_type="SEQ_CLS", delta="lora", r=2), adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, FTPConfig(task_type="SEQ_CLS", delta="lora", r=2))
    model.save_pretrained(folder)
    return folder


def test_a_folder_with_several_adapters_pushes_each_of_them(hub, tmp_path):
    """save_pretrained writes adapters other than 'default' into sub-folders; the push left them out, silently."""
    folder = _two_adapter_folder(tmp_path / "two")
    result = push_adapter(folder, "me/two")
    named = {"other/adapter_config.json", "other/adapter_model.safetensors"}
    assert set(result.files) == ADAPTER_FILES | named and hub.commits == 1
    for name in named:
        assert hub.uploads[name] == (folder / name).read_bytes()
    # a later push of a folder without that adapter removes it (it would load under the new card)
    single = _two_adapter_folder(tmp_path / "one", names=("default",))
    assert push_adapter(single, "me/two").deleted == tuple(sorted(named))
    assert set(hub.files["me/two"]) == ADAPTER_FILES | {".gitattributes"}


def test_a_further_adapter_without_safetensors_weights_is_refused(hub, tmp_path):
    folder = _two_adapter_folder(tmp_path / "two")
    (folder / "other" / "adapter_model.safetensors").rename(folder / "other" / "adapter_model.bin")
    with pytest.raises(HubError, match="further adapter 'other'.*without adapter_model.safetensors"):
        push_adapter(folder, "me/two")
    assert hub.commits == 0 and hub.uploads == {}
