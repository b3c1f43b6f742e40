"""Flows that wait on schemas built from types defined here; run as a script (its types live in
``__main__``) or imported as a module, then answered by the CLI from elsewhere."""

from __future__ import annotations

import datetime
import sys
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, field_validator

import kitaru


class Item(BaseModel):
    name: str
    price: Decimal
    when: datetime.date | None = None

    @field_validator("name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name is blank")
        return value


def _even(value: int) -> int:
    if value % 2:
        raise ValueError("must be even")
    return value


@kitaru.flow
def shapes() -> list[str]:
    """One wait per shape; the flow reports what it received, with its types."""
    return [
        repr(kitaru.wait(name="items", schema=list[Item])),
        repr(kitaru.wait(name="maybe", schema=Item | None)),
        repr(kitaru.wait(name="amounts", schema=list[Decimal])),
        repr(kitaru.wait(name="count", schema=Annotated[int, Field(gt=0)])),
        repr(kitaru.wait(name="groups", schema=dict[str, list[Item]] | None)),
    ]


@kitaru.flow
def even() -> int:
    """A validator the JSON Schema cannot express, and that is not rebuilt outside the flow."""
    return int(kitaru.wait(name="even", schema=Annotated[int, AfterValidator(_even)]))


FLOWS = {"shapes": shapes, "even": even}


def main(name: str) -> None:
    FLOWS[name].run()


if __name__ == "__main__":
    main(sys.argv[1])
