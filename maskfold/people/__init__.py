"""Which photos are one person: looks, groups and people.csv."""
