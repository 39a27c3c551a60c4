"""A sample issue and a long one, its masthead, golden files and an HTML tag collector."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

from newsletter.compose.render import (
    Masthead,
)
from newsletter.models import Article, Issue, IssueSection

T0 = datetime(2024, 6, 3, 9, 30, tzinfo=UTC)
GOLDEN = Path(__file__).parent.parent / "golden"
ARCHIVE_URL = "https://ledger.example.org/issues/12"


MASTHEAD = Masthead(
    name="The Ledger",
    base_url="https://ledger.example.org/",
    language="en",
    direction="ltr",
    postal_address="1 Harbour Street\nPort Town PT1 2AB",
    reason="You are receiving this because you subscribed to The Ledger.",
)


def article(n: int, title: str, *, section: str, authors: tuple[str, ...] = (),
            summary: str = "", image: str = "", credit: str = "", link: str = "",
            body: str = "") -> Article:
    return Article(
        key=f"link:https://ledger.example.org/articles/{n}", title=title,
        link=link or f"https://ledger.example.org/articles/{n}-story",
        published=T0 - timedelta(hours=n), updated=T0 - timedelta(hours=n),
        content_html=body or f"<p>Body of article {n}, first paragraph.</p><p>More.</p>",
        content_hash=f"hash{n}", summary=summary, authors=authors, section=section,
        image=image, image_credit=credit,
    )


def sample_issue(*, number: int = 12, status: str = "sent", image: str = "") -> Issue:
    """Three sections, five articles: an image, markup in a title, non-ASCII authors."""
    a = [
        article(1, "Harbour authority approves the new container terminal", section="City",
                authors=("Maria Keller",), image=image or "https://cdn.example.org/harbour.jpg",
                credit="Photo: Jonas Weber",
                summary="After three years of hearings the authority voted 7–2 to let the "
                        "terminal go ahead, with conditions on night-time noise and a fund "
                        "for the fishing cooperative that loses its moorings."),
        article(2, "Budget <script>alert(1)</script> & the council’s arithmetic",
                section="City", authors=("Sam Ortiz", "Lee Chen"),
                summary="The draft budget adds up only if parking revenue rises by a third; "
                        "officials say it will, the opposition says it won't."),
        article(3, "Grid bottleneck delays solar parks in the north", section="Economy",
                authors=("Zoë Ångström", "Jürgen Groß", "Ōkubo Tarō"),
                summary="Forty megawatts of finished panels are waiting for a substation that "
                        "will not be ready before 2027. Developers want the regulator to let "
                        "them share connections, which the grid operator opposes."),
        # No summary: the first paragraph of the body stands in.
        article(4, "What the rate decision means for mortgages", section="Economy"),
        article(5, "A season of chamber music in the old library", section="Culture",
                authors=("Ana Ruiz",),
                summary="Six evenings, twelve musicians and a reading room that seats "
                        "eighty: the festival returns with Haydn, Bartók and new work."),
    ]
    sections = (IssueSection("City", tuple(a[:2])), IssueSection("Economy", tuple(a[2:4])),
                IssueSection("Culture", (a[4],)))
    return Issue(number=number, subject=f"The Ledger — issue {number}",
                 preheader="A new terminal for the harbour, the budget's arithmetic and more.",
                 created=T0 + timedelta(days=number), window_start=T0 - timedelta(days=7),
                 window_end=T0, sections=sections, status=status)


def long_issue(count: int, summary_bytes: int = 3000) -> Issue:
    filler = ("The committee heard evidence from residents, traders and the port authority "
              "about the costs and benefits of the proposal. ")
    summary = (filler * (summary_bytes // len(filler) + 1))[:summary_bytes]
    sections = ("World", "Economy", "Science", "Culture")
    articles = [article(n, f"Long article number {n} about the harbour economy",
                        section=sections[n % 4], authors=("A. Writer", "B. Writer"),
                        summary=summary, body=f"<p>{summary}</p>",
                        image=f"https://cdn.example.org/{n}.jpg" if n % 5 == 0 else "")
                for n in range(count)]
    by_section = tuple(IssueSection(s, tuple(a for a in articles if a.section == s))
                       for s in sections)
    return Issue(number=99, subject="Big issue", preheader="Lots", created=T0,
                 window_start=T0 - timedelta(days=7), window_end=T0, sections=by_section)


class Tags(HTMLParser):
    """Every start tag with its attributes (values unescaped), plus the visible text."""

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(document)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def attrs(self, tag: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag]
