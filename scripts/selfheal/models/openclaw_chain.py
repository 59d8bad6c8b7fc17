"""The user's own OpenClaw models as a fallback chain, when config.yaml names no `models.chain`.

OpenClaw's chain is `agents.defaults.model` ("provider/model-id" primary and fallbacks) in
`openclaw.json` ($OPENCLAW_CONFIG_PATH, else $OPENCLAW_STATE_DIR/openclaw.json, else
~/.openclaw/openclaw.json; JSON5 as its docs write it). Each model's provider gives the base URL
(`models.providers.<id>.baseUrl`, or the known URL of a built-in provider) and the key's variable
(`apiKey: "${VAR}"`, an env SecretRef, or `<PROVIDER>_API_KEY`). Only providers that speak the OpenAI
chat API can be used; each model that cannot is reported with the reason. Keys come only from the
environment: a key written into openclaw.json is never read.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..core.config import Config, ModelEndpoint
from ..errors import ConfigError
from .openclaw_config import config_path, read_openclaw_json

# Built-in providers that speak the OpenAI chat API: base URL and key variable (None: no key needed).
BUILT_IN: Mapping[str, tuple[str, str | None]] = {
    "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "openrouter": ("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "groq": ("https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "mistral": ("https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    "deepseek": ("https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    "xai": ("https://api.x.ai/v1", "XAI_API_KEY"),
    "together": ("https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    "ollama": ("http://127.0.0.1:11434/v1", None),
    "lmstudio": ("http://127.0.0.1:1234/v1", None),
}
# Provider APIs (OpenClaw's `api`) and whether self-heal can call them; unknown ones cannot.
CHAT_APIS = frozenset({"openai-completions", "openai-responses", "ollama"})
_NOT_CHAT = {
    "anthropic": "Anthropic's Messages API",
    "google": "Google's Gemini API",
    "bedrock": "Amazon Bedrock's API",
}
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")


@dataclass(frozen=True)
class Chain:
    """A chain and where it came from: one line per entry, and the models that could not be used."""

    entries: tuple[ModelEndpoint, ...]
    sources: tuple[str, ...]
    unusable: tuple[str, ...] = ()
    origin: str = "skill.yaml"

    def unusable_line(self) -> str:
        """One line naming each configured model that cannot be used, and why ('' when none)."""
        if not self.unusable:
            return ""
        return "not used from openclaw.json: " + "; ".join(self.unusable)


def _get(data: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _name(ref: str) -> str:
    """An endpoint name from a model reference: the characters a name may hold."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", ref).strip("-.") or "model"
    return name[:128]


def _key_var(provider: str, spec: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(the key's environment variable, a problem). A key written into the file is not read."""
    key = spec.get("apiKey")
    default = re.sub(r"[^A-Z0-9_]", "_", provider.upper()) + "_API_KEY"
    if key is None:
        return default, None
    if isinstance(key, Mapping) and key.get("source") == "env" and isinstance(key.get("id"), str):
        return key["id"], None
    if isinstance(key, str):
        found = _ENV_REF.match(key.strip())
        if found:
            return found.group(1), None
        return default, "its apiKey is written in openclaw.json (self-heal reads keys only from the environment)"
    return default, "its apiKey is a secret self-heal does not read (only the environment)"


def chain_from_openclaw(env: Mapping[str, str] | None = None) -> Chain | None:
    """The chain of OpenClaw's default agent, or None when there is no openclaw.json."""
    env = os.environ if env is None else env
    path = config_path(env)
    if not path.is_file():
        return None
    data = read_openclaw_json(path)
    model = _get(data, "agents", "defaults", "model")
    refs: list[tuple[str, str]] = []
    if isinstance(model, str):
        refs.append(("agents.defaults.model", model))
    elif isinstance(model, Mapping):
        if isinstance(model.get("primary"), str):
            refs.append(("agents.defaults.model.primary", model["primary"]))
        fallbacks = model.get("fallbacks")
        if isinstance(fallbacks, list):
            refs += [
                (f"agents.defaults.model.fallbacks[{i}]", f) for i, f in enumerate(fallbacks) if isinstance(f, str)
            ]
    providers = _get(data, "models", "providers")
    providers = providers if isinstance(providers, Mapping) else {}
    entries: list[ModelEndpoint] = []
    sources: list[str] = []
    unusable: list[str] = []
    seen: set[str] = set()
    for where, ref in refs:
        provider, _, model_id = ref.partition("/")
        if not model_id:
            unusable.append(f"{ref} (not provider/model)")
            continue
        spec = providers.get(provider)
        spec = spec if isinstance(spec, Mapping) else {}
        base = spec.get("baseUrl") or spec.get("baseURL")
        api = spec.get("api")
        if base is None and provider in BUILT_IN:
            base, key_var = BUILT_IN[provider]
            problem = None
            if key_var is not None and spec.get("apiKey") is not None:
                key_var, problem = _key_var(provider, spec)
        elif base is None:
            what = _NOT_CHAT.get(provider)
            reason = f"speaks {what}, not the OpenAI chat API" if what else "no models.providers entry with a baseUrl"
            unusable.append(f"{ref} ({reason})")
            continue
        else:
            api = api or "openai-completions"  # OpenClaw's own default for a provider with a baseUrl
            if api not in CHAT_APIS:
                unusable.append(f"{ref} (its provider's api is {api}, not the OpenAI chat API)")
                continue
            base = str(base).rstrip("/")
            if api == "ollama" and not base.endswith("/v1"):
                base += "/v1"  # Ollama's OpenAI-compatible endpoint beside its native one
            key_var, problem = _key_var(provider, spec)
        host = urlsplit(str(base)).hostname or ""
        local = host in _LOOPBACK
        if key_var is not None and not env.get(key_var):
            if local:
                key_var = None  # a local server needs no key
            else:
                unusable.append(f"{ref} (" + (problem or f"${key_var} is not set") + ")")
                continue
        if problem and key_var is None and not local:
            unusable.append(f"{ref} ({problem})")
            continue
        name = _name(ref)
        if name in seen:
            continue
        seen.add(name)
        context = None
        for item in spec.get("models") or []:
            if isinstance(item, Mapping) and item.get("id") == model_id and isinstance(item.get("contextWindow"), int):
                context = item["contextWindow"]
        try:
            entry = ModelEndpoint(
                name=name,
                base_url=str(base),
                model=model_id,
                api_key_env=key_var,
                context_tokens=context,
                local=local or None,
            )
        except (TypeError, ValueError) as exc:  # pragma: no cover - every field is built checked above
            unusable.append(f"{ref} ({exc})")
            continue
        entries.append(entry)
        sources.append(
            f"{path}: {where} = {ref!r} ({'models.providers.' + provider if spec else 'built-in provider ' + provider})"
        )
    return Chain(tuple(entries), tuple(sources), tuple(unusable), origin=str(path))


_cache: dict[str, tuple[tuple[float, ...], Chain | None]] = {}


def resolve(config: Config, env: Mapping[str, str] | None = None) -> Chain:
    """The chain a call uses: config.yaml's models.chain when the user set one; else OpenClaw's models
    when openclaw.json exists (ConfigError when none of them can be used); else skill.yaml's."""
    env = os.environ if env is None else env
    own = config.models.chain
    if config.chain_configured:
        where = config.files[-1] if len(config.files) > 1 else "skill.yaml"
        return Chain(own, tuple(f"{where}: models.chain[{i}]" for i in range(len(own))), origin=where)
    path = config_path(env)
    try:
        stamp: tuple[float, ...] = (path.stat().st_mtime_ns,)
    except OSError:
        stamp = ()
    keys = tuple(sorted(k for k, v in env.items() if v and k.endswith("_API_KEY")))
    cache_key = f"{path}|{keys}"
    hit = _cache.get(cache_key)
    if hit is not None and hit[0] == stamp:
        found = hit[1]
    else:
        found = chain_from_openclaw(env) if stamp else None
        _cache[cache_key] = (stamp, found)
    if found is None:
        return Chain(own, tuple(f"skill.yaml: models.chain[{i}] (no openclaw.json at {path})" for i in range(len(own))))
    if not found.entries:
        raise ConfigError(
            "none of OpenClaw's models can be used: "
            + ("; ".join(found.unusable) or "agents.defaults.model names none")
            + " (set their key variables, or write models.chain in config.yaml)",
            file=path,
        )
    return found


def with_chain(config: Config, chain: Chain) -> Config:
    """The configuration with this chain in models.chain."""
    if chain.entries == config.models.chain:
        return config
    return dataclasses.replace(config, models=dataclasses.replace(config.models, chain=chain.entries))
