"""Infrastructure kit: settings, database, schema, migrations, errors, logging, tokens."""
