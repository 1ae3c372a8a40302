#!/usr/bin/env python3
"""Writes data/router/synthetic_short_queries.jsonl: short, chat-style queries for the eight router
categories, composed from the templates and topic lists below (written for this project, not taken
from any benchmark).

Why: the labelled data gives several categories in one style only (history is exam questions,
code is long arena prompts, SQL tasks and CS exam questions), and a classifier on it learns the
style as much as the topic. These queries show each topic asked the way users ask it.

Deterministic: the same file comes out on every run. Run from the repository root:
    python3 router/scripts/make_synthetic_queries.py
"""
import itertools
import json
import random
from pathlib import Path

PER_CATEGORY = 200

T = {
    "code": (
        [
            "Write a {lang} function that {task}.",
            "How do I {task} in {lang}?",
            "My {lang} program crashes with {error}. How do I fix it?",
            "What is the fastest way to {task} in {lang}?",
            "Can you explain {concept} with an example in {lang}?",
            "Refactor this {lang} code so it {task}.",
            "Write unit tests for a {lang} function that {task}.",
            "What does {concept} mean in programming?",
            "Given a table {table}, write a SQL query that {sql_task}.",
            "Why is my {lang} loop so slow when it {task}?",
        ],
        {
            "lang": ["Python", "JavaScript", "Rust", "Go", "Java", "C++", "TypeScript", "Bash", "C#", "Kotlin", "SQL", "C"],
            "task": [
                "reverses a linked list", "parses a CSV file", "removes duplicates from a list",
                "reads a JSON config file", "sorts a dictionary by value", "downloads a file over HTTP",
                "finds the longest common prefix of strings", "validates an email address with a regex",
                "counts word frequencies in a text file", "merges two sorted arrays", "implements a binary search",
                "retries a failed network request with backoff", "selects the top 5 customers by revenue",
                "joins two tables on user id", "spawns worker threads and waits for them", "memoizes an expensive call",
                "converts a timestamp to ISO 8601", "walks a directory recursively",
            ],
            "error": ["a null pointer exception", "an index out of range error", "a segmentation fault",
                      "'undefined is not a function'", "a borrow checker error", "a stack overflow",
                      "a deadlock", "'module not found'", "a type mismatch error"],
            "concept": ["recursion", "a closure", "a race condition", "dependency injection", "big-O notation",
                        "a hash map", "async/await", "garbage collection", "a mutex", "tail call optimisation",
                        "an SQL index", "polymorphism", "a REST API", "a git rebase"],
            "table": ["orders(id, customer_id, total, created_at)", "employees(id, name, salary, dept_id)",
                      "students(id, name, grade, class_id)", "flights(id, origin, destination, price)",
                      "products(id, name, category, stock)"],
            "sql_task": ["returns the ten largest rows", "counts rows per month", "finds duplicates",
                         "computes the average per group", "lists rows with no match in another table",
                         "ranks rows within each group"],
        },
    ),
    "math": (
        [
            "Solve for x: {equation}.",
            "What is the derivative of {function}?",
            "Compute the integral of {function} from 0 to 1.",
            "Prove that {claim}.",
            "How many ways can {count_problem}?",
            "What is {percent}% of {number}?",
            "Explain {concept} in simple terms.",
            "If {word_problem}, how long does it take?",
            "What is the probability of {prob_event}?",
            "Simplify {expression}.",
            "Find the {stat} of {data}.",
            "Is {number} a prime number? Show why.",
            "What is the area of {shape}?",
        ],
        {
            "equation": ["3x + 7 = 22", "x^2 - 5x + 6 = 0", "2^x = 64", "log(x) = 3", "5x - 2 = 3x + 10", "x/4 + 3 = 9"],
            "function": ["x^3 sin x", "e^(2x)", "ln(x^2 + 1)", "1/(1 + x^2)", "x e^x", "sqrt(x)"],
            "claim": ["the square root of 2 is irrational", "there are infinitely many primes",
                      "the sum of the first n odd numbers is n^2", "every tree with n vertices has n - 1 edges",
                      "a group of prime order is cyclic"],
            "count_problem": ["5 people sit around a round table", "you choose 3 books from 10",
                              "you arrange the letters of BANANA", "8 rooks be placed on a chessboard without attacking"],
            "percent": ["15", "7.5", "120", "33"],
            "number": ["80", "2400", "19.99", "365"],
            "concept": ["an eigenvalue", "the central limit theorem", "a limit", "modular arithmetic",
                        "a Fourier series", "Bayes' theorem", "the determinant of a matrix", "a derivative"],
            "word_problem": ["a pipe fills a tank in 6 hours and another empties it in 9 hours",
                             "two trains 300 km apart approach each other at 70 and 80 km/h",
                             "a worker paints a fence in 5 hours and a second one in 3 hours"],
            "prob_event": ["rolling two sixes with two dice", "drawing two aces from a deck",
                           "getting at least one head in three coin flips", "a random number below 100 being prime"],
            "expression": ["(x^2 - 9)/(x - 3)", "2(3x - 4) + 5x", "sqrt(50) + sqrt(18)", "(a + b)^2 - (a - b)^2"],
            "stat": ["mean", "median", "standard deviation", "variance"],
            "data": ["3, 7, 7, 2, 9", "12, 15, 11, 20", "1, 1, 2, 3, 5, 8"],
            "shape": ["a circle with radius 4 cm", "a triangle with sides 3, 4 and 5", "a regular hexagon with side 2",
                      "a trapezoid with bases 6 and 10 and height 4"],
        },
    ),
    "medicine_biology": (
        [
            "What are the symptoms of {disease}?",
            "Is it safe to take {drug} with {drug2}?",
            "What causes {disease}?",
            "How is {disease} treated?",
            "How does the {organ} work?",
            "What does {cell_thing} do in a cell?",
            "What is the normal dose of {drug} for an adult?",
            "Should I see a doctor for {complaint}?",
            "What are the side effects of {drug}?",
            "How does {disease} spread?",
            "What is the function of {cell_thing} in the body?",
        ],
        {
            "disease": ["type 2 diabetes", "shingles", "asthma", "celiac disease", "Lyme disease", "anemia",
                        "a migraine", "hypothyroidism", "pneumonia", "gout", "psoriasis", "kidney stones"],
            "drug": ["ibuprofen", "metformin", "amoxicillin", "lisinopril", "sertraline", "paracetamol", "warfarin"],
            "drug2": ["alcohol", "aspirin", "grapefruit juice", "an antihistamine", "birth control pills"],
            "organ": ["liver", "pancreas", "kidney", "immune system", "thyroid gland", "inner ear"],
            "cell_thing": ["the mitochondria", "the ribosome", "the Golgi apparatus", "messenger RNA", "a lysosome"],
            "complaint": ["a cough that lasts three weeks", "chest pain when climbing stairs",
                          "a rash after a tick bite", "blurry vision in one eye", "a fever of 39 degrees"],
        },
    ),
    "law": (
        [
            "Is it legal to {act}?",
            "Can my landlord {landlord_act}?",
            "What is the difference between {term} and {term2}?",
            "What does {term} mean in a contract?",
            "Do I need a lawyer to {legal_task}?",
            "What are my rights if {situation}?",
            "How long do I have to {legal_task}?",
            "What happens in court if {situation}?",
            "Explain {term} in plain English.",
            "Can I be sued for {act_sue}?",
        ],
        {
            "act": ["record a phone call without consent", "drive with headphones on", "fly a drone over a neighbour's house",
                    "sell homemade food online", "break a lease early", "use a copyrighted song in a video"],
            "landlord_act": ["keep my security deposit", "enter my apartment without notice", "raise the rent mid-lease",
                             "evict me without a court order"],
            "term": ["a misdemeanor", "negligence", "an indemnity clause", "a power of attorney", "fair use",
                     "a non-compete agreement", "probate"],
            "term2": ["a felony", "gross negligence", "a warranty", "a living will", "copyright infringement",
                      "a non-disclosure agreement", "a trust"],
            "legal_task": ["file for divorce", "sue for unpaid wages", "contest a will", "appeal a parking ticket",
                           "register a trademark", "file a small claims case"],
            "act_sue": ["a bad online review", "a dog bite", "sharing a photo of someone", "breaking an NDA",
                        "a car accident that was not my fault"],
            "situation": ["I am fired without notice", "I am arrested", "a company leaks my personal data",
                          "my employer does not pay overtime", "a product I bought injured me"],
        },
    ),
    "science": (
        [
            "Why {phenomenon}?",
            "Explain how {process} works.",
            "What is the difference between {thing} and {thing2}?",
            "What happens when {event}?",
            "How do scientists measure {quantity}?",
            "What is {concept}?",
            "How does {factor} affect {outcome}?",
        ],
        {
            "phenomenon": ["is the sky blue", "does ice float on water", "do we have seasons", "does metal feel cold",
                           "do stars twinkle", "does salt melt ice", "is the ocean salty"],
            "process": ["nuclear fusion in the sun", "photosynthesis", "plate tectonics", "a rainbow forming",
                        "a battery storing energy", "the greenhouse effect", "radioactive decay", "an electric motor"],
            "thing": ["mass", "an atom", "speed", "weather", "a physical change", "an acid", "heat"],
            "thing2": ["weight", "a molecule", "velocity", "climate", "a chemical change", "a base", "temperature"],
            "event": ["you mix baking soda and vinegar", "light passes through a prism", "water boils at high altitude",
                      "two magnets' north poles meet", "a star runs out of fuel"],
            "quantity": ["the distance to a star", "the age of a rock", "the speed of light", "earthquake strength",
                         "the temperature of the sun"],
            "concept": ["entropy", "a black hole", "dark matter", "an isotope", "the Doppler effect", "osmosis",
                        "a covalent bond", "inertia", "a catalyst", "quantum tunnelling", "the ozone layer"],
            "factor": ["temperature", "pressure", "altitude", "surface area", "concentration", "friction"],
            "outcome": ["the rate of a chemical reaction", "the boiling point of water", "the speed of sound",
                        "air resistance", "the solubility of a gas"],
        },
    ),
    "history_humanities": (
        [
            "What caused {event}?",
            "Who was {figure} and why do they matter?",
            "What were the consequences of {event}?",
            "Summarize the main ideas of {thinker}.",
            "How did {event} change {region}?",
            "What is the meaning of {work}?",
            "Why did {empire} fall?",
            "When did {event} happen and who was involved?",
            "What role did {figure} play in history?",
            "Compare the political ideas of {thinker} and {thinker2}.",
        ],
        {
            "event": ["the French Revolution", "World War I", "the fall of the Berlin Wall", "the Industrial Revolution",
                      "the Protestant Reformation", "the Cuban Missile Crisis", "the partition of India",
                      "the Meiji Restoration", "the American Civil War", "the Black Death"],
            "figure": ["Napoleon", "Cleopatra", "Genghis Khan", "Martin Luther King Jr.", "Simon Bolivar",
                       "Queen Elizabeth I", "Mansa Musa", "Otto von Bismarck", "Mahatma Gandhi"],
            "thinker": ["Plato", "Confucius", "Immanuel Kant", "Simone de Beauvoir", "John Locke", "Karl Marx",
                        "Friedrich Nietzsche", "Adam Smith"],
            "thinker2": ["Aristotle", "Thomas Hobbes", "Jean-Jacques Rousseau", "Hannah Arendt", "Machiavelli"],
            "region": ["Europe", "East Asia", "Latin America", "Africa", "the Middle East"],
            "work": ["Hamlet's soliloquy", "the Sistine Chapel ceiling", "Guernica", "the Odyssey",
                     "the Declaration of Independence"],
            "empire": ["the Roman Empire", "the Ottoman Empire", "the Aztec Empire", "the Mughal Empire",
                       "the Soviet Union", "the Byzantine Empire"],
        },
    ),
    "creative_writing": (
        [
            "Write a short poem about {topic}.",
            "Write a story in which {premise}.",
            "Give me a haiku about {topic}.",
            "Write a limerick about {topic}.",
            "Write the opening paragraph of a {genre} novel about {topic}.",
            "Write a song chorus about {topic}.",
            "Describe {topic} as a {genre} narrator would.",
        ],
        {
            "topic": ["autumn rain", "a lighthouse keeper", "the first day of school", "a lost cat", "city lights at night",
                      "an old friendship", "the sea", "a broken clock", "moving to a new country", "coffee"],
            "premise": ["a dragon is afraid of the dark", "a detective can hear lies", "two strangers swap phones",
                        "the last tree on Earth talks", "a robot learns to paint", "a village forgets its own name"],
            "genre": ["mystery", "fantasy", "science fiction", "noir", "romance", "horror"],
        },
    ),
    "general_chat": (
        [
            "What's a good {thing} for {occasion}?",
            "How do I {everyday}?",
            "Can you recommend {recommend}?",
            "What's the best way to {everyday}?",
            "{greeting}",
            "Tell me {fun}.",
            "How much should I {money} each month?",
            "Who won {contest}?",
            "What time zone is {city} in?",
            "Is it worth {choice}?",
            "What should I cook for {occasion}?",
            "Any tips to {everyday} when I am busy?",
            "What do you think about {opinion}?",
        ],
        {
            "thing": ["gift", "restaurant", "movie", "outfit", "board game", "playlist"],
            "occasion": ["a birthday", "a rainy weekend", "a first date", "a family dinner", "a long flight"],
            "everyday": ["get rid of a wine stain", "fall asleep faster", "make small talk at a party",
                         "organize my closet", "keep houseplants alive", "plan a road trip", "save money on groceries",
                         "write a polite complaint email", "learn to cook rice"],
            "recommend": ["a podcast about travel", "a good sci-fi book", "a weekend trip near Paris",
                          "a budget laptop", "a workout routine for beginners"],
            "greeting": ["Hi! How are you today?", "Good morning, what should I do this weekend?",
                         "Thanks for the help earlier!", "Can you help me decide what to eat tonight?"],
            "fun": ["a fun fact", "a joke", "something interesting about octopuses", "a riddle"],
            "money": ["save for retirement", "spend on rent", "put into an emergency fund", "budget for food"],
            "contest": ["the last football world cup", "best picture at the Oscars last year", "the Tour de France in 2019",
                        "the Eurovision song contest in 2021"],
            "opinion": ["working from home", "pineapple on pizza", "getting up at 5 am", "social media breaks", "cats vs dogs"],
            "city": ["Sydney", "Chicago", "Mumbai", "Lisbon", "Seoul"],
            "choice": ["buying an electric car", "getting a credit card with an annual fee", "learning to play guitar as an adult",
                       "renting instead of buying a house", "paying for a streaming service"],
        },
    ),
}


def expand(templates, slots, rng):
    out = set()
    for t in templates:
        names = [n for n in slots if "{" + n + "}" in t]
        combos = list(itertools.product(*(slots[n] for n in names)))
        rng.shuffle(combos)
        for c in combos[: max(1, PER_CATEGORY // len(templates) + 2)]:
            out.add(t.format(**dict(zip(names, c))))
    out = sorted(out)
    rng.shuffle(out)
    return out[:PER_CATEGORY]


def main():
    rng = random.Random(0)
    path = Path("data/router/synthetic_short_queries.jsonl")
    with path.open("w") as f:
        for cat, (templates, slots) in T.items():
            for i, q in enumerate(expand(templates, slots, rng)):
                row = {"id": f"synthetic:{cat}:{i}", "prompt": q, "category": cat,
                       "source": "synthetic_templates", "label_quality": "synthetic"}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
