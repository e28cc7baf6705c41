"""Which OpenBLAS core the embedded server is told to use (``OPENBLAS_CORETYPE``)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bismarck_controller import embedded

AVX512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
OTHER = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq",
         "avx512vl", "avx512_bf16", "amx_tile"]


@given(flags=st.sets(st.sampled_from(OTHER)),
       detected=st.sampled_from(["Prescott", "Core2", "Sandybridge", "prescott ", "Haswell",
                                 "SkylakeX", "Cooperlake", "SapphireRapids", "Zen"]))
def test_only_a_generic_fallback_core_is_overridden_and_only_by_what_the_flags_allow(
        flags: set[str], detected: str) -> None:
    got = embedded.blas_core(frozenset(flags), detected)
    generic = detected.strip().lower() in embedded.GENERIC_BLAS_CORES
    if not generic:
        assert got is None  # OpenBLAS knew the processor: its choice stands
    elif flags >= AVX512:
        assert got == "SkylakeX"
    elif {"avx2", "fma"} <= flags:
        assert got == "Haswell"
    else:
        assert got is None  # no core with AVX2 may run here


def test_no_openblas_means_no_override() -> None:
    assert embedded.blas_core(frozenset(AVX512 | {"avx2", "fma"}), None) is None


def test_cpu_flags_reads_the_first_processor(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nflags\t: sse\n")
    assert embedded.cpu_flags(info) == {"fpu", "avx2", "fma"}
    assert embedded.cpu_flags(tmp_path / "missing") == frozenset()


def test_the_callers_own_core_wins(monkeypatch) -> None:
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert "OPENBLAS_CORETYPE" not in embedded.server_env()
    assert embedded.server_env().items() >= embedded.SERVER_MALLOC.items()
