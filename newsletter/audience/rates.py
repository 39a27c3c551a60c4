"""An issue's bounce and complaint rates, and the warnings they call for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IssueRates:
    """Events of one issue against the messages it sent."""

    number: int
    sent: int
    hard: int
    soft: int
    complaints: int

    @classmethod
    def of(cls, number: int, sent: int, counts: dict[str, int]) -> IssueRates:
        return cls(number, sent, counts.get("hard", 0), counts.get("soft", 0),
                   counts.get("complaint", 0))

    @property
    def hard_rate(self) -> float:
        return self.hard / self.sent if self.sent else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.sent if self.sent else 0.0

    def warnings(self, complaint_limit: float, hard_limit: float) -> list[str]:
        """One sentence per rate at or over its line; none before anything was sent."""
        out = []
        if self.sent and self.complaints and self.complaint_rate >= complaint_limit:
            out.append(f"issue {self.number}: complaint rate {percent(self.complaint_rate)} "
                       f"({self.complaints} of {self.sent} sent) reaches "
                       f"{percent(complaint_limit)}; Gmail and Yahoo junk bulk mail above 0.3%")
        if self.sent and self.hard and self.hard_rate >= hard_limit:
            out.append(f"issue {self.number}: hard-bounce rate {percent(self.hard_rate)} "
                       f"({self.hard} of {self.sent} sent) reaches {percent(hard_limit)}; "
                       f"check where these addresses came from")
        return out


def percent(rate: float) -> str:
    """0.0012 → '0.12%': two decimals are what the 0.1% and 0.3% lines need."""
    return f"{rate * 100:.2f}%"
