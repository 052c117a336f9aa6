"""Tasks of the Tableau refresh: domain configuration, PAT lease, Tableau session, refresh protocol."""
