"""Exchange emulator: the venues' real protocols on 127.0.0.1, one server per registered venue server.

Public API::

    from marketprism_dagster.emulator import Emulator, EmulatorConfig

    cfg = EmulatorConfig(mode="synth", rate=100, seed=7, faults="gap:every=1000")
    async with Emulator(cfg) as emu:
        emu.urls[market_id]        # {"rest": "http://127.0.0.1:P", "ws": "ws://127.0.0.1:P"}
        emu.faults_fired           # {"gap": {server: 3}}
        emu.stats                  # per venue server: connections, messages, REST requests/errors

    handle = Emulator.start_in_thread(cfg)   # sync code: own loop in a daemon thread
    handle.urls; handle.faults_fired; handle.stop()

The venues are modules of this package that declare their servers (``SERVERS``, see
registry.py: routes, markets, default symbols, slow-stream periods, options, fault hooks);
the generic modules know no venue. ``urls`` has every market id of the running servers (the
markets of one server share its URL). Clients compose paths as on the real venues (see each
venue module).

Modes: ``replay`` serves sessions/*.jsonl from the shared fixtures byte for byte, in order,
at the recorded pace scaled by ``speed`` (0 = as fast as the client reads); data types that
were never recorded answer with the venues' documented examples re-addressed to the
requested symbol (each venue module says which). ``synth`` generates unlimited,
self-consistent traffic (seeded random-walk books with valid update-id chains and checksums,
REST snapshots of the same books, trades, funding, open interest, long/short ratios,
liquidations, volatility indices) at ``rate`` messages/s per stream; venue options
(``EmulatorConfig(**options)``, CLI ``--option-name``) choose protocol variants (each venue
module documents its own). History endpoints (synth) answer the same ids, prices, sizes and
times the streams and polls gave (history.py, series.py; each venue module lists params,
limits and retention with sources). Faults: see faults.py for the grammar (``drop_trades``
keeps a range of trades off the stream while the history keeps them;
``Emulator.dropped_trades`` has the ids). CLI: ``marketprism emulate`` (cli.py:
``run_emulator`` and the typer ``app``).
"""

from .clock import Clock, ManualClock, WallClock
from .config import EmulatorConfig
from .faults import FaultPlan, FaultSpecError
from .registry import Route, ServerSpec, VenueOption, register
from .server import Emulator, EmulatorThread

__all__ = [
    "Clock",
    "Emulator",
    "EmulatorConfig",
    "EmulatorThread",
    "FaultPlan",
    "FaultSpecError",
    "ManualClock",
    "Route",
    "ServerSpec",
    "VenueOption",
    "WallClock",
    "register",
]
