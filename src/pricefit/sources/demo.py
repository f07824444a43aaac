"""Built-in synthetic demo catalog (``demo`` or ``demo:N``, default 600 items). SYNTHETIC DATA.

Seeded and fast: the same N gives the same catalog. Every record carries ``synthetic: true`` and
its store/brand names are invented. Listings read like Amazon item metadata (title, description,
features, details) and their prices follow a learnable function of the attributes:

    price = base(product type) x tier(brand) x size x material x (1 + 0.06 x warranty years) x noise

with log-normal noise (sigma 0.12), rounded to a .99/.49 ending, kept within $1-$990. The text is
about 100-160 tokens, so nearly every item passes curation with the default rules.
"""

from __future__ import annotations

import math
import random
from typing import Any, Iterator

from ..errors import PricefitError
from . import Record, Source

DEFAULT_N = 600
SEED = 20231129
MAX_N = 1_000_000

# category -> [(product, base price USD, unit, sizes, use)]
CATALOG: dict[str, list[tuple[str, float, str, tuple[int, ...], str]]] = {
    "Appliances": [
        ("Countertop Blender", 60, "oz", (32, 48, 64), "smoothies, soups and frozen drinks"),
        ("Stand Mixer", 180, "quart", (4, 5, 6), "bread dough, cakes and cookie batter"),
        ("Microwave Oven", 120, "cu ft", (1, 2), "reheating, defrosting and quick meals"),
        ("Air Fryer", 90, "quart", (4, 6, 8), "crispy fries, wings and roasted vegetables"),
        ("Dishwasher", 520, "place settings", (8, 12, 14), "everyday dishes, pots and glassware"),
    ],
    "Electronics": [
        ("Bluetooth Speaker", 45, "watt", (10, 20, 40), "parties, travel and the backyard"),
        ("Wireless Headphones", 80, "hour battery", (20, 30, 40), "commuting, work calls and music"),
        ("Computer Monitor", 260, "inch", (24, 27, 32), "office work, gaming and photo editing"),
        ("Portable SSD", 110, "TB", (1, 2, 4), "backups, video projects and game libraries"),
    ],
    "Tools_and_Home_Improvement": [
        ("Cordless Drill", 90, "volt", (12, 18, 20), "drilling, driving screws and home repairs"),
        ("Circular Saw", 130, "inch blade", (6, 7), "framing, decking and plywood cuts"),
        ("LED Shop Light", 35, "foot", (2, 4), "garages, workshops and basements"),
        ("Mechanics Tool Set", 70, "piece", (40, 100, 200), "auto repair, bikes and household fixes"),
    ],
    "Automotive": [
        ("Battery Charger", 55, "amp", (2, 6, 10), "cars, motorcycles, boats and lawn tractors"),
        ("Dash Cam", 75, "p video", (720, 1080, 1440), "recording the road, parking and incidents"),
        ("All-Weather Floor Mats", 40, "piece set", (2, 4), "mud, snow, sand and spills"),
        ("Portable Tire Inflator", 45, "PSI max", (100, 150), "tires, bikes and sports balls"),
    ],
    "Musical_Instruments": [
        ("Acoustic Guitar", 220, "inch scale", (24, 25), "beginners, songwriters and stage players"),
        ("Digital Piano", 480, "key", (61, 76, 88), "practice, lessons and home recording"),
        ("Guitar Strings", 12, "pack", (1, 3), "acoustic guitars with a bright, warm tone"),
        ("Condenser Microphone", 95, "mm capsule", (16, 25, 34), "podcasts, vocals and streaming"),
    ],
    "Office_Products": [
        ("Ergonomic Desk Chair", 160, "lb capacity", (250, 300, 400), "long workdays and home offices"),
        ("Label Printer", 70, "mm tape", (12, 24), "files, shipping labels and storage bins"),
        ("Paper Shredder", 85, "sheet", (8, 12, 16), "bank statements, mail and credit cards"),
        ("Gel Pens", 9, "count", (12, 24, 48), "journaling, notes and everyday writing"),
    ],
}
TIERS = [  # (name, price multiplier, brands, words)
    ("budget", 0.7, ("Valuline", "Basix", "Homewise"), "simple, dependable"),
    ("standard", 1.0, ("Corvan", "Northfield", "Alderon"), "well-built, versatile"),
    ("premium", 1.6, ("Zenithra", "Aurelian", "Lumiere"), "professional-grade, refined"),
]
MATERIALS = [("plastic", 0.9), ("aluminum", 1.05), ("stainless steel", 1.15), ("solid wood", 1.2)]
COLORS = ["Black", "White", "Silver", "Graphite", "Navy Blue", "Sage Green", "Red"]
FEATURE_TEMPLATES = [
    "{Size} {unit} design sized for {use}",
    "Built from {material} with a {color_l} finish that resists scratches and fingerprints",
    "{warranty}-year limited warranty and friendly support from {brand}",
    "Easy setup: everything you need is included in the box, no extra tools required",
    "Compact footprint and quiet operation make it a good fit for apartments and small spaces",
    "Designed and tested for {use}, with controls that are easy to read at a glance",
]


def _n_of(spec: str) -> int:
    if spec == "demo":
        return DEFAULT_N
    text = spec.split(":", 1)[1].strip()
    try:
        n = int(text)
    except ValueError:
        raise PricefitError(f"demo size {text!r} is not a whole number", hint="write demo or demo:N, e.g. demo:600") from None
    if not 1 <= n <= MAX_N:
        raise PricefitError(f"demo size {n} is out of range", hint=f"choose N between 1 and {MAX_N}")
    return n


def source(spec: str) -> Source:
    n = _n_of(spec)
    name = f"demo:{n}"
    return Source(spec=spec, files=[name], synthetic=True, _iter=lambda: _iter_demo(n, name), size_hint=n)


def _iter_demo(n: int, name: str) -> Iterator[Record]:
    rng = random.Random(SEED)
    for i in range(n):
        yield Record(name, i + 1, make_item(rng, i))


def _price_ending(value: float) -> float:
    value = min(max(value, 1.0), 990.0)
    return math.floor(value) + (0.99 if value - math.floor(value) >= 0.5 else 0.49)


def make_item(rng: random.Random, i: int) -> dict[str, Any]:
    category = rng.choice(list(CATALOG))
    product, base, unit, sizes, use = rng.choice(CATALOG[category])
    tier_name, tier_mult, brands, tier_words = rng.choice(TIERS)
    brand = rng.choice(brands)
    size_idx = rng.randrange(len(sizes))
    size = sizes[size_idx]
    size_mult = 1.0 + 0.35 * size_idx  # bigger variants cost more
    material, mat_mult = rng.choice(MATERIALS)
    color = rng.choice(COLORS)
    warranty = rng.choice((1, 2, 3, 5))
    noise = math.exp(rng.gauss(0.0, 0.12))
    price = _price_ending(base * tier_mult * size_mult * mat_mult * (1 + 0.06 * warranty) * noise)
    f = dict(Size=size, unit=unit, use=use, material=material, color_l=color.lower(), warranty=warranty, brand=brand)
    features = [t.format(**f) for t in rng.sample(FEATURE_TEMPLATES, 4)]
    title = f"{brand} {product}, {size} {unit}, {material.title()}, {color}"
    description = [
        f"The {brand} {product.lower()} is a {tier_words} choice for {use}. "
        f"Its {material} body and {size} {unit} capacity are made for years of daily use, "
        f"and the {color.lower()} finish suits any room.",
        f"Every {brand} product is backed by a {warranty}-year warranty.",
    ]
    details = {
        "Brand": brand,
        "Color": color,
        "Material": material.title(),
        "Size": f"{size} {unit}",
        "Warranty": f"{warranty} years",
        "Item Weight": f"{rng.randint(1, 40)} pounds",  # dropped as noise by the default rules
        "Model Number": f"{brand[:3].upper()}{rng.randint(1000, 9999)}X",
    }
    return {
        "main_category": category,
        "title": title,
        "average_rating": round(rng.uniform(3.5, 5.0), 1),
        "rating_number": rng.randint(0, 5000),
        "features": features,
        "description": description,
        "price": price,
        "images": [],
        "videos": [],
        "store": brand,
        "categories": [category.replace("_", " "), product],
        "details": details,
        "parent_asin": f"DEMO{i + 1:06d}",
        "bought_together": None,
        "synthetic": True,
    }
