"""The only place with SQL: schema, migrations and the queries each stage needs."""
