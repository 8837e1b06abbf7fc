#!/usr/bin/env python3
"""A small story grammar: the demo model's training corpus, written for this project.

    python tools/story_grammar.py N [--seed S] > stories.txt

Each story has a character with a trait, a place, a wish or a problem, a
friend, some dialogue, an event and an ending, drawn from lists written here,
so sentences are simple and grammatical but rarely repeat as whole stories.
Stories are separated by a blank line.
"""

import argparse
import random
import sys

GIRLS = ["Lily", "Mia", "Sara", "Lucy", "Anna", "Emma", "Zoe", "Ruby", "Ella", "Ivy", "Nina", "Rosa"]
BOYS = ["Tom", "Ben", "Max", "Sam", "Jack", "Leo", "Finn", "Noah", "Kai", "Omar", "Theo", "Eli"]
NAMES = GIRLS + BOYS
ANIMALS = ["a little cat", "a small dog", "a brown rabbit", "a tiny bird", "a young fox", "a fat frog",
           "a gray mouse", "a kind bear", "a slow turtle", "a happy duck", "a shy owl", "a big cow"]
ANIMAL_NAMES = ["Whiskers", "Spot", "Pip", "Daisy", "Button", "Fluff", "Coco", "Bingo", "Hops", "Sunny"]
TRAITS = ["happy", "curious", "brave", "shy", "kind", "silly", "busy", "sleepy", "clever", "gentle"]
PLACES = ["the park", "the garden", "the forest", "the beach", "the farm", "the school", "the lake",
          "the hill", "the town", "the meadow", "the kitchen", "the library", "the river", "the zoo"]
OBJECTS = ["a red ball", "a blue kite", "a shiny stone", "a big box", "a yellow hat", "a toy car",
           "a small boat", "a pretty flower", "a warm blanket", "an old book", "a green cup",
           "a long rope", "a soft pillow", "a golden key", "a paper star", "a wooden spoon"]
FOODS = ["an apple", "a cookie", "some bread", "a banana", "some soup", "a piece of cake", "some berries",
         "a carrot", "some cheese", "a sandwich"]
WEATHER = ["The sun was bright.", "It was a windy day.", "It was raining a little.", "The sky was blue.",
           "It was a cold morning.", "The day was warm and quiet.", "Snow was falling softly."]
FEELINGS = ["happy", "sad", "scared", "excited", "tired", "surprised", "proud", "worried", "glad"]
VERBS_PLAY = ["play with", "look at", "share", "carry", "hide", "find", "fix", "clean", "paint"]
EVENTS = [
    "{friend} fell down and hurt {fpos} knee.",
    "A big wind blew {obj} away.",
    "{obj_cap} fell into the water.",
    "The sky turned dark and it started to rain.",
    "{friend} could not find {fpos} way home.",
    "A loud noise came from behind a tree.",
    "{name} saw that {obj} was broken.",
    "{friend} was hungry and had no food.",
    "The door was locked and nobody had the key.",
]
HELP = [
    "{name} helped {friend} get up and gave {fobj} a hug.",
    "{name} ran after it and caught it just in time.",
    "{name} used a long stick to get it back.",
    "They found a dry place under a big tree and waited together.",
    "{name} held {fpos} hand and they walked home together.",
    "They looked and saw that it was only a little bird.",
    "{name} and {friend} fixed it with some glue and tape.",
    "{name} gave {friend} {food}.",
    "{name} looked under the mat and found the key.",
]
SAYS = [
    '"Can I play too?" asked {friend}.',
    '"Look at this!" said {name}.',
    '"Thank you," said {friend} with a smile.',
    '"Do not be scared," said {name}. "I will help you."',
    '"What is that?" asked {name}.',
    '"Let us go to {place}," said {friend}.',
    '"I like your {thing}," said {friend}.',
    '"We can do it together," said {name}.',
    '"I am sorry," said {friend}. "I did not mean to."',
    '"Mom, can we go outside?" asked {name}.',
]
ENDINGS = [
    "From that day on, {name} and {friend} were best friends.",
    "{name} learned that it is good to share.",
    "That night, {name} went to bed feeling {feeling}.",
    "They played until the sun went down.",
    "{name} smiled. It was the best day ever.",
    "{name} learned that helping others makes everyone happy.",
    "Mom gave them warm milk, and they all laughed.",
    "The next day, they went to {place} again.",
]


def pronouns(name):
    return ("she", "her", "her") if name in GIRLS else ("he", "his", "him")


def story(rng):
    name = rng.choice(NAMES)
    he, his, him = pronouns(name)
    if rng.random() < 0.5:
        friend = rng.choice([n for n in NAMES if n != name])
        fhe, fpos, fobj = pronouns(friend)
        intro_friend = f"{name} had a friend named {friend}."
    else:
        friend = rng.choice(ANIMAL_NAMES)
        _, fpos, fobj = ("it", "its", "it")
        intro_friend = f"{name} had {rng.choice(ANIMALS)} named {friend}."
    trait, place, obj = rng.choice(TRAITS), rng.choice(PLACES), rng.choice(OBJECTS)
    thing = obj.split()[-1]
    fill = dict(name=name, friend=friend, fpos=fpos, fobj=fobj, obj=f"the {thing}", place=rng.choice(PLACES),
                obj_cap=f"The {thing}", thing=thing, food=rng.choice(FOODS), feeling=rng.choice(FEELINGS))
    opening = rng.choice(["Once upon a time, there was a {t} {k} named {n}.",
                          "One day, a {t} {k} named {n} went to {p}.",
                          "There was once a {t} {k} called {n}."])
    kind = "girl" if he == "she" else "boy"
    out = [opening.format(t=trait, k=kind, n=name, p=place), intro_friend]
    if rng.random() < 0.6:
        out.append(rng.choice(WEATHER))
    out.append(f"{name} and {friend} went to {place}." if "went to" not in out[0]
               else f"{he.capitalize()} wanted to {rng.choice(VERBS_PLAY)} {obj}.")
    out.append(f"{he.capitalize()} saw {obj} and felt {rng.choice(FEELINGS)}.")
    for _ in range(rng.randint(1, 2)):
        out.append(rng.choice(SAYS).format(**fill))
    k = rng.randrange(len(EVENTS))
    out.append(EVENTS[k].format(**fill))
    out.append(f"{name} felt {rng.choice(FEELINGS)}.")
    out.append(HELP[k].format(**fill))
    if rng.random() < 0.5:
        out.append(rng.choice(SAYS).format(**fill))
    out.append(rng.choice(ENDINGS).format(**fill))
    return " ".join(out)


def stories(n, seed):
    rng = random.Random(seed)
    return [story(rng) for _ in range(n)]


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    sys.stdout.write("\n\n".join(stories(a.n, a.seed)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
