"""storybook: personalised picture books from a few photos of a child."""

__version__ = "0.1.0"
