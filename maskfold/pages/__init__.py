"""What a person looks at: the report's HTML, charts and contact sheets."""
