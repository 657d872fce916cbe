"""story: the words of a book. A writer (the offline Jinja2 one or an LLM) drafts the story from a brief, the story
rules check it, and the stage turns it into book pages with scene prompts holding the characters' tokens."""
