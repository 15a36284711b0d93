"""Exchange emulator: Binance spot / USD-M, OKX v5 and Deribit on 127.0.0.1.

Public API::

    from marketprism_dagster.emulator import Emulator, EmulatorConfig

    cfg = EmulatorConfig(mode="synth", rate=100, seed=7, faults="gap@binance_derivatives:every=1000")
    async with Emulator(cfg) as emu:
        emu.urls["binance_spot"]   # {"rest": "http://127.0.0.1:P", "ws": "ws://127.0.0.1:P"}
        emu.faults_fired           # {"gap": {"binance_derivatives": 3}}
        emu.stats                  # per venue server: connections, messages, REST requests/errors

    handle = Emulator.start_in_thread(cfg)   # sync code: own loop in a daemon thread
    handle.urls; handle.faults_fired; handle.stop()

``urls`` has the market ids binance_spot, binance_derivatives, okx_spot, okx_derivatives
(both on the one OKX server) and deribit_derivatives. Clients compose paths as on the real
venues (see the venue modules: binance.py, okx.py, deribit.py).

Modes: ``replay`` serves sessions/*.jsonl from the shared fixtures byte for byte, in order,
at the recorded pace scaled by ``speed`` (0 = as fast as the client reads); data types that
were never recorded answer with the venues' documented examples re-addressed to the
requested symbol (each venue module says which). ``synth`` generates unlimited,
self-consistent traffic (seeded random-walk books with valid update-id chains, REST
snapshots of the same books, trades, funding, open interest, long/short ratios,
liquidations, DVOL) at ``rate`` messages/s per stream. OKX ``books`` follow ``okx_books``
(CLI ``--okx-books``): ``zero`` (default, today's OKX: pushed snapshot, checksum 0), ``rest``
(no pushed snapshot: REST snapshot with seqId bridged to the stream) or ``checksum`` (legacy
CRC32); see okx.py. History endpoints (synth: Binance aggTrades, fundingRate and the
futures/data series with startTime/endTime; OKX history-trades, funding-rate-history and the
rubik series with begin/end; Deribit DVOL candles) answer the same ids, prices, sizes and times
the streams and polls gave (history.py, series.py; each venue module lists params, limits and
retention with sources). Faults: see faults.py for the grammar (``drop_trades`` keeps a range of
trades off the stream while the history keeps them; ``Emulator.dropped_trades`` has the ids).
CLI: ``marketprism emulate`` (cli.py: ``run_emulator`` and the typer ``app``).
"""

from .clock import Clock, ManualClock, WallClock
from .config import EmulatorConfig
from .faults import FaultPlan, FaultSpecError
from .okx_checksum import okx_checksum
from .server import Emulator, EmulatorThread

__all__ = [
    "Clock",
    "Emulator",
    "EmulatorConfig",
    "EmulatorThread",
    "FaultPlan",
    "FaultSpecError",
    "ManualClock",
    "WallClock",
    "okx_checksum",
]
