"""Config section of the central-platform delivery (`central:` in a deployment YAML)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote

from pydantic import Field, field_validator, model_validator

from core.schema import FieldError, StrictModel


class CentralConfig(StrictModel):
    url: str | None = Field(
        None,
        description="URL the cases are POSTed to; empty = no central platform, cases are only stored locally",
    )
    events_url: str | None = Field(
        None,
        description="URL template the later events of a case (updated, cleared, withdrawn) are POSTed to;"
        " '{case_id}' is replaced by the case id; empty = '<url>/{case_id}/events'",
    )
    token: str | None = Field(None, description="bearer token sent as 'Authorization: Bearer <token>'")
    timeout_s: float = Field(10.0, gt=0, description="timeout of one delivery request, seconds")
    evidence_mode: Literal["multipart", "base64"] = Field(
        "multipart",
        description="how evidence files travel: multipart parts evidence[i] beside a 'case' JSON part,"
        " or base64 inside the JSON body",
    )
    max_attempts: int | None = Field(
        None, ge=1, description="attempts before a case is dead-lettered; empty = retry forever"
    )
    backoff_initial_s: float = Field(1.0, gt=0, description="retry delay after the first failure, seconds")
    backoff_max_s: float = Field(300.0, gt=0, description="longest retry delay, seconds")
    concurrency: int = Field(4, ge=1, le=64, description="requests in flight at once")
    batch: int = Field(50, ge=1, description="cases taken from the outbox per poll")
    poll_s: float = Field(
        5.0, gt=0, description="longest sleep between outbox polls when nothing wakes the worker, seconds"
    )
    max_evidence_bytes: int = Field(
        20 * 1024 * 1024, ge=0, description="evidence files larger than this are sent without their bytes"
    )

    @field_validator("url", "events_url", "token", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check(self) -> CentralConfig:
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise FieldError("url", f"must start with http:// or https://, got {self.url!r}")
        if self.events_url is not None:
            if not self.events_url.startswith(("http://", "https://")):
                raise FieldError("events_url", f"must start with http:// or https://, got {self.events_url!r}")
            if "{case_id}" not in self.events_url:
                raise FieldError("events_url", f"must contain {{case_id}}, got {self.events_url!r}")
        if self.backoff_max_s < self.backoff_initial_s:
            raise FieldError("backoff_max_s", "must be >= backoff_initial_s")
        return self

    def events_url_for(self, case_id: str) -> str:
        """Where the events of `case_id` go (the case id is percent-encoded into the path)."""
        template = self.events_url or f"{(self.url or '').rstrip('/')}/{{case_id}}/events"
        return template.replace("{case_id}", quote(case_id, safe=""))
