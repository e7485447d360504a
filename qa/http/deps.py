"""What routes reach through dependencies: the state built once by create_app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from qa.engine import Engine
from qa.synthesis import Synthesizer


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_synthesizer(request: Request) -> Synthesizer | None:
    synthesizer: Synthesizer | None = request.app.state.synthesizer
    return synthesizer


EngineDep = Annotated[Engine, Depends(get_engine)]
SynthesizerDep = Annotated[Synthesizer | None, Depends(get_synthesizer)]
