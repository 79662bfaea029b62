"""``ssmtl export --push-to-hub OWNER/NAME``: an export folder uploaded to the Hugging Face hub.

Through ``huggingface_hub`` (the optional extra: ``pip install 'ssmtl[hub]'``), with the token
``hf auth login`` stored or ``HF_TOKEN`` holds. Everything that can be checked without the
network is checked before the export is written: the package, the repository id, and a
token; then, before uploading, the model card as ``huggingface_hub`` itself parses it. The
upload (the repository created if missing, then one commit of the whole folder) needs the
network and cannot be exercised by ssmtl's offline tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssmtl.api.errors import SsmtlError

FLAG = "--push-to-hub"


@dataclass(frozen=True)
class PushTarget:
    repo: str
    token: str
    private: bool = False


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise SsmtlError(f"{FLAG} needs the huggingface_hub package: pip install 'ssmtl[hub]'") from None
    return huggingface_hub


def prepare_push(repo: str, private: bool = False) -> PushTarget:
    """Check what can be checked offline (the package, the repository id, a token) before any export work."""
    hub = _hub()
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if "/" not in repo:
        raise SsmtlError(f"{FLAG} {repo}: give the repository as OWNER/NAME (your user or organisation, then the model's name)")
    try:
        validate_repo_id(repo)
    except HFValidationError as exc:
        raise SsmtlError(f"{FLAG} {repo}: not a valid repository id ({str(exc).splitlines()[0]})") from None
    try:
        token = hub.get_token()
    except Exception as exc:  # an OIDC exchange that failed, a token file that could not be read
        raise SsmtlError(f"{FLAG} {repo}: cannot read the Hugging Face token ({type(exc).__name__}: {exc})") from None
    if not token:
        raise SsmtlError(f"{FLAG} {repo}: no Hugging Face token; log in first (hf auth login) or set HF_TOKEN")
    return PushTarget(repo, token, private)


def check_card(folder: Path) -> None:
    """The folder's README.md as ``huggingface_hub`` reads a model card (its metadata and model-index); offline."""
    hub = _hub()
    try:
        hub.ModelCard.load(Path(folder) / "README.md")
    except Exception as exc:
        raise SsmtlError(f"{Path(folder) / 'README.md'}: huggingface_hub refuses the model card ({exc})") from None


def push_folder(folder: Path, target: PushTarget, message: str) -> str:
    """Upload ``folder`` to ``target`` as one commit; returns the repository's address."""
    hub = _hub()
    check_card(folder)
    api = hub.HfApi(token=target.token)
    try:
        url = api.create_repo(target.repo, repo_type="model", private=target.private, exist_ok=True)
        api.upload_folder(repo_id=target.repo, repo_type="model", folder_path=str(folder), commit_message=message)
    except Exception as exc:  # network, permission and quota errors: one line naming the repository
        first = (str(exc).strip().splitlines() or [""])[0]
        raise SsmtlError(f"{FLAG} {target.repo}: the upload failed ({type(exc).__name__}: {first}); the export "
                         f"folder {folder} is complete: push it again later") from None
    return str(url)
