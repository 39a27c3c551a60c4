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

    def over(self, complaint_limit: float, hard_limit: float) -> set[str]:
        """Which rates are at or over their line: "complaint", "hard"."""
        out = set()
        if self.sent and self.complaints and self.complaint_rate >= complaint_limit:
            out.add("complaint")
        if self.sent and self.hard and self.hard_rate >= hard_limit:
            out.add("hard")
        return out

    def without(self, hard: int, complaints: int) -> IssueRates:
        """The rates as they were before these events."""
        return IssueRates(self.number, self.sent, self.hard - hard, self.soft,
                          self.complaints - complaints)

    def warnings(self, complaint_limit: float, hard_limit: float,
                 only: set[str] | None = None) -> list[str]:
        """One sentence per rate at or over its line (of those in `only`, if given); none
        before anything was sent."""
        over = self.over(complaint_limit, hard_limit)
        if only is not None:
            over &= only
        out = []
        if "complaint" in over:
            out.append(f"issue {self.number}: complaint rate {percent(self.complaint_rate)} "
                       f"({self.complaints} of {self.sent} sent) reaches "
                       f"{percent(complaint_limit)}; Gmail and Yahoo junk bulk mail above 0.3%")
        if "hard" in over:
            out.append(f"issue {self.number}: hard-bounce rate {percent(self.hard_rate)} "
                       f"({self.hard} of {self.sent} sent) reaches {percent(hard_limit)}; "
                       f"check where these addresses came from")
        return out


def percent(rate: float) -> str:
    """0.0012 → '0.12%': two decimals are what the 0.1% and 0.3% lines need."""
    return f"{rate * 100:.2f}%"
