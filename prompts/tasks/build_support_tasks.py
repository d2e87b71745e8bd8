"""Writes support_tasks.jsonl, the task set `quantserve eval` scores every model on (run it after editing).

Four kinds of short support-desk work, each answer checked by an exact rule (eval/tasks.py `score`):
intent (one label of five), policy (a number or one of two options read from a store rule), extract (a string
copied exactly from a customer message) and fact (one word or number). The prompt formats are the ones the
default model, SmolLM2-135M-Instruct, could follow when this set was designed (greedy, max_tokens 24):
  - intent: the label list in a system message and two worked examples per label as earlier chat turns; with
    the list inline, or the examples in the system message, the model wrote sentences that named no label.
  - policy: the one rule quoted in the user turn beside the question, a system message asking for a few words.
    Plain yes/no questions are few on purpose: in sixteen formats the model answered "No" (or "Yes") to nearly
    every one, whatever the rule said, so most policy questions ask for a number or one of two options instead.
  - extract: the message quoted in the user turn and no examples: with examples the model copied the last
    example's answer.
  - fact: three worked examples in a system message.
Every item is original text about the fictional retailer Northwind Gadgets or general knowledge.
"""

from __future__ import annotations

import json
from typing import Any

from quantserve.eval.tasks import default_tasks_path

LABELS = ["refund", "shipping", "account", "technical", "billing"]

INTENT_SYSTEM = f"Label each customer message with one word: {', '.join(LABELS)}."
INTENT_PREFIX = "Topic of: "
# Two examples per label, none of them scored; interleaved so no label is always the last one shown.
INTENT_SHOTS = [
    ("I returned the shoes. Please put the money back on my card.", "refund"),
    ("I can't log in because I don't remember my password.", "account"),
    ("The toaster only heats on one side.", "technical"),
    ("My package says delivered but I can't find it anywhere.", "shipping"),
    ("I was billed $30 for something I never ordered.", "billing"),
    ("I don't want the lamp anymore, can I get my money back?", "refund"),
    ("Can you add my new address to my profile?", "account"),
    ("The coffee maker shows a red light and won't brew.", "technical"),
    ("How long does standard delivery take to Texas?", "shipping"),
    ("Please send an invoice for my last payment.", "billing"),
]
INTENT = {
    "refund": [
        "I returned the blender two weeks ago and still haven't received my money back.",
        "The headphones arrived broken. I just want my money back, not a new pair.",
        "Can I get a refund for the desk lamp? I don't like the color.",
        "I sent back the coffee grinder. When will the refund reach my card?",
        "Please refund the speaker I returned last Monday.",
        "The jacket didn't fit, so I mailed it back. Where is my refund?",
        "I canceled the order before it shipped, so please give me my money back.",
        "The kettle leaks and I don't want a replacement, just a refund.",
        "You received my returned vacuum on the 3rd and I'm still waiting for the refund.",
        "I'd like to send these curtains back for a full refund.",
        "My return was accepted but the refund was only half the price I paid.",
        "How long does a refund take after you get the returned item?",
    ],
    "shipping": [
        "Where is my package? The tracking hasn't moved in five days.",
        "My order was supposed to arrive yesterday and it's still not here.",
        "Can you send my order to a different delivery address?",
        "The courier says the parcel was delivered but nothing is at my door.",
        "How much does express delivery to Chicago cost?",
        "Do you deliver to Canada?",
        "My tracking page says label created. When will the package ship?",
        "Can I choose a delivery date for the sofa?",
        "The package went to my old address by mistake.",
        "Is delivery free on orders over fifty dollars?",
        "When will my order be delivered? It has been a week.",
        "The delivery driver left my parcel with the wrong neighbor.",
    ],
    "account": [
        "I forgot my password and the reset email never arrives.",
        "How do I change the email address on my account?",
        "Someone logged into my account from another country.",
        "I can't sign in. It says my account is locked.",
        "Please delete my account and all my personal data.",
        "How do I change the username on my profile?",
        "I want to turn on two-step login for my account.",
        "My account profile shows someone else's name.",
        "I made two accounts by mistake. Can you merge them?",
        "The login page says wrong password even after a reset.",
        "How do I update the phone number saved in my profile?",
        "I never got the email to verify my new account.",
    ],
    "technical": [
        "My Bluetooth speaker keeps turning off after a few seconds.",
        "The smart bulb won't connect to my Wi-Fi.",
        "The blender makes a loud grinding noise and then stops.",
        "My tablet screen freezes when I open the camera.",
        "The robot vacuum won't charge on its dock.",
        "The app crashes every time I try to pair my smartwatch.",
        "The printer says paper jam but there is no paper inside.",
        "My headphones only play sound in the left ear.",
        "The thermostat display shows error code E4.",
        "The laptop won't turn on after the latest software update.",
        "The TV remote stopped working even with new batteries.",
        "The security camera shows a black screen in the app.",
    ],
    "billing": [
        "I was charged twice for the same order.",
        "Can I get an invoice with my company name on it?",
        "Why is there an extra $5 fee on my bill?",
        "My credit card was declined at checkout but it has money on it.",
        "How do I change the card you charge for my subscription?",
        "I see a charge from Northwind on my statement that I don't recognize.",
        "Can I pay with PayPal instead of a credit card?",
        "The discount code wasn't applied and I was charged full price.",
        "Please send me a receipt for last month's payment.",
        "My monthly subscription price went up without notice.",
        "Can I split the payment across two cards?",
        "The sales tax on my invoice looks wrong.",
    ],
}

RULES = {
    "return": "Items can be returned within 30 days of delivery.",
    "no-return": "Gift cards and opened software cannot be returned.",
    "refund": "Refunds go back to the original payment method.",
    "free-shipping": "Shipping is free on orders over $50.",
    "countries": "We ship to the United States and Canada only.",
    "express": "Express delivery is available for $15.",
    "warranty": "Every electronic device has a one-year warranty.",
    "price-match": "We do not offer price matching.",
    "address": "The shipping address can be changed until the order ships.",
    "cancel": "Orders cannot be canceled after they ship.",
    "payment": "We accept credit cards and PayPal. We do not accept checks or cash.",
    "gift-wrap": "Gift wrapping costs $4 per item.",
    "hours": "Customer support is open Monday to Friday, 9 am to 6 pm.",
    "students": "Students get a 10% discount with a valid student ID.",
    "damaged": "Damaged items are replaced for free.",
}
POLICY_SYSTEM = "You answer questions about Northwind's store rules in a few words."
YES_NO = ["yes", "no"]
# (rule, question, answer, options): no options means a number; two-option questions put the right one first
# about as often as second, so a model that always picks the first (or second) option scores about half.
POLICY: list[tuple[str, str, str, list[str] | None]] = [
    ("return", "How many days after delivery can an item be returned?", "30", None),
    ("free-shipping", "Shipping is free on orders over how many dollars?", "50", None),
    ("express", "How many dollars does express delivery cost?", "15", None),
    ("warranty", "How many years is the warranty on an electronic device?", "1", None),
    ("gift-wrap", "How many dollars does gift wrapping cost per item?", "4", None),
    ("hours", "At what hour in the morning does customer support open?", "9", None),
    ("hours", "At what hour in the evening does customer support close?", "6", None),
    ("students", "What percent discount do students get?", "10", None),
    ("return", "A customer got a lamp 10 days ago. Can it be returned, yes or no?", "yes", YES_NO),
    ("no-return", "Which cannot be returned: a toaster or a gift card?", "gift card", ["toaster", "gift card"]),
    ("no-return", "Which can be returned: unopened software or opened software?", "unopened software",
     ["unopened software", "opened software"]),
    ("refund", "Where does a refund go: to the original payment method or to a gift card?",
     "original payment method", ["original payment method", "gift card"]),
    ("countries", "Which country does Northwind ship to: Mexico or Canada?", "Canada", ["Mexico", "Canada"]),
    ("countries", "Which country does Northwind ship to: Japan or Canada?", "Canada", ["Japan", "Canada"]),
    ("price-match", "Does Northwind offer price matching, yes or no?", "no", YES_NO),
    ("address", "When can the shipping address be changed: before or after the order ships?", "before",
     ["before", "after"]),
    ("cancel", "When can an order no longer be canceled: before or after it ships?", "after", ["before", "after"]),
    ("payment", "Which payment is accepted: cash or PayPal?", "PayPal", ["cash", "PayPal"]),
    ("payment", "Which payment is accepted: a check or a credit card?", "credit card", ["check", "credit card"]),
    ("hours", "On which day is customer support open: Sunday or Tuesday?", "Tuesday", ["Sunday", "Tuesday"]),
    ("hours", "On which day is customer support closed: Saturday or Monday?", "Saturday", ["Saturday", "Monday"]),
    ("damaged", "How are damaged items replaced: for free or for a fee?", "for free", ["for free", "for a fee"]),
    ("students", "What do students need for the discount: a student ID or a coupon?", "student ID",
     ["student ID", "coupon"]),
    ("free-shipping", "Is shipping free on an order of $80 or on an order of $20?", "$80", ["$80", "$20"]),
    ("return", "Within how many days of delivery must a return happen?", "30", None),
    ("free-shipping", "What order total in dollars must be passed for free shipping?", "50", None),
    ("express", "What is the price of express delivery in dollars?", "15", None),
    ("gift-wrap", "What does gift wrapping cost in dollars for one item?", "4", None),
    ("students", "How big is the student discount in percent?", "10", None),
    ("hours", "Customer support opens at what time in the morning?", "9", None),
    ("warranty", "For how many years is a new device covered by the warranty?", "1", None),
    ("gift-wrap", "Gift wrapping for 2 items costs how many dollars?", "8", None),
    ("return", "Can a kettle be returned 45 days after delivery, yes or no?", "no", YES_NO),
    ("no-return", "Which can be returned: a toaster or a gift card?", "toaster", ["toaster", "gift card"]),
    ("no-return", "Which cannot be returned: opened software or unopened software?", "opened software",
     ["opened software", "unopened software"]),
    ("refund", "Where does a refund go: to a gift card or to the original payment method?",
     "original payment method", ["gift card", "original payment method"]),
    ("countries", "Which country does Northwind not ship to: Canada or Brazil?", "Brazil", ["Canada", "Brazil"]),
    ("countries", "Which country does Northwind not ship to: Germany or the United States?", "Germany",
     ["Germany", "United States"]),
    ("express", "Is express delivery free or does it cost $15?", "$15", ["free", "$15"]),
    ("warranty", "How long is the warranty on a laptop: one year or five years?", "one year",
     ["one year", "five years"]),
    ("price-match", "Will Northwind match a lower price from another store, yes or no?", "no", YES_NO),
    ("address", "When can the shipping address no longer be changed: before or after the order ships?", "after",
     ["before", "after"]),
    ("cancel", "When can an order still be canceled: before or after it ships?", "before", ["before", "after"]),
    ("payment", "Which payment is not accepted: PayPal or cash?", "cash", ["PayPal", "cash"]),
    ("payment", "Which payment is not accepted: a check or a credit card?", "check", ["check", "credit card"]),
    ("gift-wrap", "Is gift wrapping free or does it cost $4 per item?", "$4", ["free", "$4"]),
    ("hours", "On which day is customer support open: Monday or Sunday?", "Monday", ["Monday", "Sunday"]),
    ("hours", "On which day is customer support closed: Friday or Sunday?", "Sunday", ["Friday", "Sunday"]),
    ("hours", "Is customer support open at 10 am or at 8 pm?", "10 am", ["10 am", "8 pm"]),
    ("students", "Who gets a 10% discount: students or teachers?", "students", ["students", "teachers"]),
    ("students", "Who gets a 10% discount: teachers or students?", "students", ["teachers", "students"]),
    ("damaged", "What happens to damaged items: they are replaced or they are repaired?", "replaced",
     ["replaced", "repaired"]),
    ("damaged", "What happens to damaged items: they are repaired or they are replaced?", "replaced",
     ["repaired", "replaced"]),
    ("free-shipping", "Is shipping free on an order of $30 or on an order of $90?", "$90", ["$30", "$90"]),
    ("return", "Which can be returned: a fan delivered 5 days ago or a fan delivered 50 days ago?", "5 days",
     ["5 days", "50 days"]),
    ("return", "Which can be returned: a lamp delivered 60 days ago or a lamp delivered 20 days ago?", "20 days",
     ["60 days", "20 days"]),
    ("refund", "Does a refund go back to the original payment method, yes or no?", "yes", YES_NO),
    ("countries", "Does Northwind ship to Canada, yes or no?", "yes", YES_NO),
    ("payment", "Which payment is accepted: a debit card or PayPal?", "PayPal", ["debit card", "PayPal"]),
    ("address", "Can the shipping address be changed before the order ships, yes or no?", "yes", YES_NO),
]

# The field as asked for: the order number's format is spelled out because the model otherwise drops "NW-".
FIELDS = {"order": "order number (NW- and five digits)", "email": "email address", "name": "customer's name",
          "phone": "phone number", "tracking": "tracking number", "product": "product name",
          "promo": "promo code"}
EXTRACT = [
    ("Order NW-48213 arrived with a cracked screen. I paid $129 on May 3.", "order", "NW-48213"),
    ("Hi, my order NW-10577 was due June 14 but it's June 18 now.", "order", "NW-10577"),
    ("Case 20931 is about order NW-25540. Nobody replied yet.", "order", "NW-25540"),
    ("I bought 2 chargers in order NW-93015 and only 1 came. Zip code 60614.", "order", "NW-93015"),
    ("Warranty claim W-19044 is for order NW-61739, a coffee machine.", "order", "NW-61739"),
    ("Please cancel NW-37264 before it ships, I ordered 3 by mistake.", "order", "NW-37264"),
    ("My order number is NW-58830 and my phone is 555-0142.", "order", "NW-58830"),
    ("Refund for NW-20093 still missing after 14 days.", "order", "NW-20093"),
    ("The tracking for NW-84402 hasn't changed since March 2.", "order", "NW-84402"),
    ("I need an invoice for order NW-72045, total $310.", "order", "NW-72045"),
    ("Hello, order NW-30418 has the wrong charger inside.", "order", "NW-30418"),
    ("Ticket 8812: order NW-77150 never shipped.", "order", "NW-77150"),
    ("I was billed $64 twice for NW-42906.", "order", "NW-42906"),
    ("Swap the color on NW-15583 to black please.", "order", "NW-15583"),
    ("Please email me at dana.kim@example.com about my return.", "email", "dana.kim@example.com"),
    ("You can reach me at j.rivera@mailbox.org after 5 pm.", "email", "j.rivera@mailbox.org"),
    ("My account email is sam_lee42@example.net but I can't log in.", "email", "sam_lee42@example.net"),
    ("Send the receipt to billing@oakfarm.co, not my personal email.", "email", "billing@oakfarm.co"),
    ("I changed my email to priya.n@example.com last week.", "email", "priya.n@example.com"),
    ("Contact me: tom.baker@example.org or call 555-0199.", "email", "tom.baker@example.org"),
    ("Reset link should go to lena@northmail.com please.", "email", "lena@northmail.com"),
    ("The invoice went to ops@brightdesk.io by mistake.", "email", "ops@brightdesk.io"),
    ("My email is maria.lopez@example.com and my order is late.", "email", "maria.lopez@example.com"),
    ("Please update my email to kai.w@fastmail.com.", "email", "kai.w@fastmail.com"),
    ("My name is Priya Patel and my blender stopped working.", "name", "Priya Patel"),
    ("This is Marcus Webb. My package is late.", "name", "Marcus Webb"),
    ("Hello, Elena Garcia here. I was charged twice.", "name", "Elena Garcia"),
    ("Hi, I'm Tom Okafor and I can't log in.", "name", "Tom Okafor"),
    ("Ana Silva here, writing about my refund.", "name", "Ana Silva"),
    ("My name is David Chen. The lamp arrived broken.", "name", "David Chen"),
    ("Hi, this is Grace Miller. Where is my order?", "name", "Grace Miller"),
    ("I'm Omar Haddad and my speaker won't charge.", "name", "Omar Haddad"),
    ("Hi, this is Hannah Berg. My kettle leaks.", "name", "Hannah Berg"),
    ("My name is Luis Romero and I need an invoice.", "name", "Luis Romero"),
    ("Yuki Tanaka here. The fan is too loud.", "name", "Yuki Tanaka"),
    ("Call me back at 555-0187 about my order.", "phone", "555-0187"),
    ("My phone number is 555-0123, please text me.", "phone", "555-0123"),
    ("Reach me on 555-0164 after noon, order NW-11820.", "phone", "555-0164"),
    ("Update my phone to 555-0110 on the account.", "phone", "555-0110"),
    ("Text me at 555-0176 when it ships.", "phone", "555-0176"),
    ("Our office line is 555-0133.", "phone", "555-0133"),
    ("Tracking number 1Z84F92A0312 shows no updates.", "tracking", "1Z84F92A0312"),
    ("The courier gave me tracking TRK-55021. It says lost.", "tracking", "TRK-55021"),
    ("Package with tracking 9400-1118-2233 is stuck.", "tracking", "9400-1118-2233"),
    ("Tracking code UPS-730021 says delivered.", "tracking", "UPS-730021"),
    ("Tracking number 1Z55A7010 has not moved.", "tracking", "1Z55A7010"),
    ("My Aero 300 blender stopped working after a week.", "product", "Aero 300"),
    ("The Lumo Mini lamp flickers when I turn it on.", "product", "Lumo Mini"),
    ("I want to return the Breeze X2 fan. It is too loud.", "product", "Breeze X2"),
    ("The Sonic Pod speaker keeps turning off.", "product", "Sonic Pod"),
    ("My Zen Kettle leaks from the bottom.", "product", "Zen Kettle"),
    ("The Nova Watch 2 won't pair with my phone.", "product", "Nova Watch 2"),
    ("The Arc Lamp 5 stopped turning on.", "product", "Arc Lamp 5"),
    ("I want to return my Cloud Mixer.", "product", "Cloud Mixer"),
    ("Use promo code SPRING20 on my order please.", "promo", "SPRING20"),
    ("The code WELCOME10 did not work at checkout.", "promo", "WELCOME10"),
    ("I tried discount code SAVE15 but got full price.", "promo", "SAVE15"),
    ("My friend gave me code FREESHIP, can I still use it?", "promo", "FREESHIP"),
    ("Code HOLIDAY25 gave me no discount.", "promo", "HOLIDAY25"),
    ("Can I use the code STUDENT10 on a laptop?", "promo", "STUDENT10"),
]

FACT_SHOTS = [("What is the capital of Peru?", "Lima"), ("What color is a lemon?", "yellow"),
              ("How many legs does a cat have?", "4")]
FACT_SYSTEM = "Answer the question with one word or one number.\n\nExamples:\n\n" + "\n\n".join(
    f"{q}\nAnswer: {a}" for q, a in FACT_SHOTS)
FACT = [
    ("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"), ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"), ("What is the capital of England?", "London"),
    ("What is the capital of Russia?", "Moscow"), ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of China?", "Beijing"), ("What is the capital of Greece?", "Athens"),
    ("What is the capital of Portugal?", "Lisbon"), ("What is the capital of Australia?", "Canberra"),
    ("What color is the sky on a clear day?", "blue"), ("What color is snow?", "white"),
    ("What color are most leaves in summer?", "green"), ("Which planet is known as the Red Planet?", "Mars"),
    ("What is the largest planet in our solar system?", "Jupiter"), ("What do bees make?", "honey"),
    ("What is frozen water called?", "ice"), ("What is the opposite of hot?", "cold"),
    ("What is the opposite of up?", "down"), ("What is the opposite of day?", "night"),
    ("What is the opposite of big?", "small"), ("What is the opposite of fast?", "slow"),
    ("What is the opposite of left?", "right"), ("What is the opposite of wet?", "dry"),
    ("What is the opposite of happy?", "sad"), ("What is the opposite of open?", "closed"),
    ("In which direction does the sun rise?", "east"), ("What gas do people need to breathe?", "oxygen"),
    ("What is the largest ocean on Earth?", "Pacific"), ("What is the tallest animal?", "giraffe"),
    ("Which metal is liquid at room temperature?", "mercury"),
    ("What do cows drink and people pour on cereal? It is white.", "milk"),
    ("What language is spoken in Brazil?", "Portuguese"), ("On which continent is Kenya?", "Africa"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"), ("What is the closest star to Earth?", "Sun"),
    ("What do you call a baby cat?", "kitten"), ("What is the main language spoken in Mexico?", "Spanish"),
    ("What language is spoken in France?", "French"), ("What language is spoken in Germany?", "German"),
    ("What currency is used in Japan?", "yen"), ("What is H2O commonly called?", "water"),
    ("Who painted the Mona Lisa?", "Vinci"), ("What is the fastest land animal?", "cheetah"),
    ("What planet do we live on?", "Earth"),
]
FACT_NUMBERS = [
    ("How many days are in a week?", "7"), ("How many legs does a spider have?", "8"),
    ("How many months are in a year?", "12"), ("How many hours are in a day?", "24"),
    ("How many sides does a triangle have?", "3"), ("How many legs does a dog have?", "4"),
    ("How many continents are there?", "7"), ("How many days are in a year?", "365"),
    ("How many seconds are in a minute?", "60"), ("How many sides does a square have?", "4"),
    ("How many weeks are in a year?", "52"), ("How many planets are in our solar system?", "8"),
    ("How many sides does a hexagon have?", "6"),
]


def _intent(message: str) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": INTENT_SYSTEM}]
    for text, label in INTENT_SHOTS:
        turns += [{"role": "user", "content": INTENT_PREFIX + text}, {"role": "assistant", "content": label}]
    return [*turns, {"role": "user", "content": INTENT_PREFIX + message}]


def tasks() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for label, messages in INTENT.items():
        rows += [{"kind": "intent", "messages": _intent(m), "answer": label, "match": "choice", "choices": LABELS}
                 for m in messages]
    for rule, question, answer, options in POLICY:
        ask = f'Rule: "{RULES[rule]}"\nQuestion: {question}' + (" Answer with a number." if options is None else "")
        messages = [{"role": "system", "content": POLICY_SYSTEM}, {"role": "user", "content": ask}]
        row: dict[str, Any] = {"kind": "policy", "messages": messages, "answer": answer}
        rows.append(row | ({"match": "number"} if options is None else {"match": "choice", "choices": options}))
    for message, field, answer in EXTRACT:
        ask = f'Customer message: "{message}"\nCopy the {FIELDS[field]} from the customer message.'
        rows.append({"kind": "extract", "messages": [{"role": "user", "content": ask}], "answer": answer,
                     "match": "contains"})
    for items, match in ((FACT, "contains"), (FACT_NUMBERS, "number")):
        rows += [{"kind": "fact", "messages": [{"role": "system", "content": FACT_SYSTEM},
                                               {"role": "user", "content": q}], "answer": a, "match": match}
                 for q, a in items]
    counters: dict[str, int] = {}
    for row in rows:
        counters[row["kind"]] = counters.get(row["kind"], 0) + 1
        row["id"] = f"{row['kind']}-{counters[row['kind']]:03d}"
    return [{"id": r.pop("id"), **r} for r in rows]


def main() -> None:
    rows, out = tasks(), default_tasks_path()
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    print(f"wrote {len(rows)} tasks to {out}")


if __name__ == "__main__":
    main()
