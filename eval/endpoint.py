"""The OpenAI-compatible server under test: URL handling and the /v1/models pre-flight check."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from quantserve.errors import UserError


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # without a trailing /v1
    api_key: str | None = None

    @classmethod
    def of(cls, base_url: str, api_key: str | None = None) -> Endpoint:
        url = base_url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise UserError(f"--base-url must start with http:// or https://, got {base_url!r}")
        return cls(base_url=url.removesuffix("/v1"), api_key=api_key or None)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def url(self, path: str) -> str:
        return f"{self.base_url}/v1/{path.lstrip('/')}"


async def model_cards(client: httpx.AsyncClient, endpoint: Endpoint) -> list[dict]:
    """The /v1/models entries as the server wrote them (quantserve's gateway adds format, dtype, dtype_from)."""
    url = endpoint.url("models")
    try:
        resp = await client.get(url, headers=endpoint.headers, timeout=10.0)
    except httpx.HTTPError as err:
        raise UserError(f"cannot reach {url}: {type(err).__name__} {err} (is the server running?)") from None
    if resp.status_code in (401, 403):
        raise UserError(f"{url} rejected the API key (HTTP {resp.status_code}); pass a valid --api-key")
    if resp.status_code != 200:
        raise UserError(f"{url} answered HTTP {resp.status_code}; is this an OpenAI-compatible server?")
    try:
        cards = resp.json()["data"]
        if not all(isinstance(c, dict) and isinstance(c["id"], str) for c in cards):
            raise TypeError
        return cards
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{url} did not return an OpenAI model list") from None


async def check_models(client: httpx.AsyncClient, endpoint: Endpoint, wanted: list[str]) -> list[dict]:
    """The /v1/models cards of the models to measure: `wanted`, each verified to be served, or every one."""
    cards = await model_cards(client, endpoint)
    if not wanted:
        if not cards:
            raise UserError(f"{endpoint.url('models')} lists no models")
        return cards
    by_id = {card["id"]: card for card in cards}
    missing = [m for m in wanted if m not in by_id]
    if missing:
        raise UserError(f"model(s) {', '.join(missing)} not served at {endpoint.base_url}; "
                        f"served: {', '.join(by_id) or 'none'}")
    return [by_id[m] for m in wanted]
