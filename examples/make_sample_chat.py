"""Generate the synthetic sample chat `examples/WhatsApp Chat with Noa.txt` (deterministic, no network).

Two invented people text each other for six months, as an Android WhatsApp export in the Israeli 24h locale
(`dd/mm/yyyy, HH:MM - Name: body`), exported from Daniel's phone:

- **Noa** (the persona the demo imitates) sends short bursts of lowercase messages with emoji, "haha"/"חחח",
  and mixes Hebrew and English.
- **Daniel** writes one long, capitalised, punctuated message per turn, in English, with no emoji.

They keep coming back to the same places (café Nechama on Dizengoff, Gordon beach, Noa's parents in Haifa), plans
(dinner, a trip up north, a concert at the Barby) and running jokes (Pita the cat, Noa's broken scooter), each with
templated variation. Conversations are separated by hours of silence, so a one-hour gap splitter finds ~300 of them.

The export also holds what real exports hold: the encryption notice, a few system lines, `<Media omitted>`,
deleted and edited messages, links and multi-line messages, plus a little *invented* personal data, mostly in
Noa's messages (see PLANTED_PII) for the privacy pass and the canary tests. No real person's messages are in it.

Run:  python examples/make_sample_chat.py            # rewrites the file next to this script
      python examples/make_sample_chat.py --out X.txt
The output depends only on SEED: the same script always writes the same bytes (tests check this).
"""

import argparse
import random
from datetime import date, datetime, timedelta
from pathlib import Path

SEED = 20250105
START = date(2025, 1, 5)
END = date(2025, 6, 28)  # six months: enough for ~300 conversations and ~4,500 messages
NOA, DANIEL = "Noa", "Daniel"
OUT = Path(__file__).resolve().parent / "WhatsApp Chat with Noa.txt"

ENCRYPTION = ("Messages and calls are end-to-end encrypted. Only people in this chat can read, listen to, "
              "or share them. Learn more.")

# Invented personal data, each planted in Noa's messages (some twice, in two spellings) so that the privacy pass
# has something to find and a canary test can check that none of it reaches a dataset or a model.
PLANTED_PII = {
    "phone_il": ["050-234-5678", "+972 50-234-5678"],
    "phone_uk": ["+44 7700 123456"],
    "email": ["noa.levi.design@example.com"],
    "iban": ["IL29 0123 4500 0001 2345 678"],  # valid checksum, invented account
    "il_id": ["123456782"],  # valid Teudat Zehut check digit, the textbook example number
    "phone_il_landline": ["+972 4-693-1234"],  # the one planted in a Daniel message (the zimmer's owner)
}

LAUGH = ["haha", "hahaha", "hahahah", "חחח", "חחחח", "חחחחחח", "lol", "lmao"]
EMOJI = ["😂", "😂😂", "🤣", "😭", "🥹", "❤️", "😍", "🙈", "💀", "🙏", "✨", "🔥", "😅", "🥲", "👀", "😴", "🤦‍♀️", "💅"]

# Noa's small talk: reactions that fit anywhere in a burst.
NOA_GENERIC = [
    "{lol}", "{lol}", "{lol} {e}", "{e}", "omg", "wait", "ok ok", "סבבה", "יאללה", "כן", "נכון", "אוף", "ugh",
    "yesss", "noooo", "אני מתה", "lmaooo", "true", "ממש", "nice", "מושלם", "איזה כיף", "bruh", "מה", "what",
    "stoppp", "i cant", "dead {e}", "ok but why", "נו באמת", "same", "די", "literally", "אחלה", "sure sure",
    "love it", "hmm", "kk", "תכף", "ok wait", "הכי", "for real", "no way", "😂😂😂", "🙈", "❤️❤️",
]

DANIEL_GENERIC = [
    "That makes sense. I will think about it on the way home and let you know what I decide later tonight.",
    "I am not entirely sure I follow, but I trust your judgement on this one, as I usually do.",
    "Honestly, I had the same thought this morning, so I suppose that settles it for both of us.",
    "Fair enough. I will admit that it sounds slightly more reasonable when you explain it like that.",
    "I am laughing in the middle of the office now, and people are looking at me strangely, so thank you.",
    "Let me finish this meeting first, it should be over in about twenty minutes, and then I will call you.",
    "That is a very good point, and I am a little annoyed that I did not think of it myself.",
    "I will believe it when I see it, but I am willing to be proven wrong, as usual.",
]

# Each topic: openers, middles and closers for both people. Slots: {lol} laughter, {e} emoji, {day},
# {time}, {dish}, {show}, {weather} (Noa's words) and {weather_d} (Daniel's).
TOPICS = {
    "cafe": {
        "noa_open": ["nechama at {time}?", "coffee?? {e}", "בא לי קפה", "u at work? come to nechama",
                     "im at nechama, the good table is free {e}", "קפה ב{time}?", "saving u a seat at nechama"],
        "daniel_open": [
            "Are you free for coffee at Nechama {day}? I could be there around {time}, if that works for you.",
            "I am walking down Dizengoff and I can see Nechama from here. Do you want to join me for a coffee?",
            "I need a break from this spreadsheet. Coffee at Nechama in half an hour, if you are around?",
        ],
        "noa": ["the barista with the moustache is here {lol}", "they have the cheesecake again {e}",
                "order me a flat white", "im 5 min away", "ok running late sorry {e}", "שמרתי לך מקום",
                "its so full today", "the wifi is dead again {lol}", "take the shakshuka its amazing",
                "they changed the cups {e}", "מלא אנשים", "found a table outside", "the croissants are gone {e}",
                "iced coffee weather {e}", "the music here today {e}", "omg they remembered my order"],
        "daniel": [
            "I will be there in ten minutes. Please order me the usual, a large americano with a little cold milk.",
            "The last time we sat outside a pigeon stole half of my croissant, so I would prefer a table inside.",
            "I have to say that their cheesecake is the only reason I still tolerate the noise in that place.",
            "I am stuck at the crossing on Frishman, the traffic light seems to have stopped working entirely.",
            "If the barista with the moustache asks about me again, please tell him I am still thinking about it.",
            "I brought my laptop, but I promise I will not open it unless it is an actual emergency at work.",
            "The new waitress asked whether we were the couple who always argue about the cheesecake. I said no, "
            "obviously.",
            "I tried the oat milk today, as you suggested, and I regret to inform you that it tastes like wet "
            "cardboard.",
            "They have put the prices up again. Eighteen shekels for a coffee is, in my opinion, a small tragedy.",
        ],
        "noa_close": ["ok see u there {e}", "כבר מגיעה", "yalla coming", "bring the charger pls"],
        "daniel_close": [
            "Perfect, see you there. I will be the one with the laptop and the tired face.",
            "Great. I will leave the office now and walk over, it should not take more than fifteen minutes.",
        ],
    },
    "beach": {
        "noa_open": ["beach??? {e}", "ים?", "sunset at gordon?", "its sooo hot lets go to the beach",
                     "i'm at gordon come {e}", "matkot later?"],
        "daniel_open": [
            "The forecast says it will be clear this evening. Would you like to go to Gordon beach for the sunset?",
            "I finally bought proper beach chairs, the folding kind, so I am officially ready for the summer.",
        ],
        "noa": ["the water is perfect {e}", "מדוזות!!! {e}", "jellyfish everywhere {lol}", "bring the matkot",
                "bring watermelon", "im already burnt {e}", "the lifeguard keeps yelling at ppl {lol}",
                "look at the sunset rn", "<Media omitted>", "<Media omitted>", "ok swimming brb",
                "sand in my phone again", "someone is playing matkot so loud {e}", "שכחתי מגבת",
                "the sunset today {e}", "im not leaving ever"],
        "daniel": [
            "I will bring the chairs, the umbrella and some cold water. Please do not forget the sunscreen again.",
            "Last time I spent the entire evening picking sand out of my bag, so I am bringing a proper towel.",
            "I read that there were jellyfish near Frishman yesterday, so maybe we should stay closer to Gordon.",
            "I can leave the office at five and be at the beach by half past, if the bus cooperates.",
            "I refuse to play matkot with you again until you admit that you were cheating last time.",
            "The sea looked very rough from my window this morning, so please swim close to the lifeguard today.",
            "I forgot my sunglasses at home, so if I squint at you all evening, please do not take it personally.",
            "There is a man with a speaker playing very loud music next to us, and I am seriously considering moving.",
        ],
        "noa_close": ["ok come fast {e}", "yalla bye {e}", "see u at the lifeguard tower", "מחכה לך"],
        "daniel_close": [
            "I am on my way. I will meet you by the lifeguard tower, as usual, in about twenty minutes.",
            "Good, then it is settled. Sunset at Gordon, and I will bring something cold to drink.",
        ],
    },
    "haifa": {
        "noa_open": ["going to haifa this weekend", "my mom says hi {e}", "im on the train to haifa",
                     "אמא שלי שואלת עליך",
                     "shabbat dinner at my parents?"],
        "daniel_open": [
            "Are you still going up to Haifa this weekend? Please say hello to your parents from me.",
            "How was the train to Haifa? I hope it was less crowded than the last time you went.",
        ],
        "noa": ["the train is sooo full {e}", "my mom made kubbeh {e}", "אבא שלי מדבר על פוליטיקה שוב",
                "the view from the carmel {e}", "<Media omitted>", "my mom wants u to come next time {lol}",
                "she packed me food for a week", "haifa is so quiet {lol}", "my dad fixed the scooter?? no",
                "ate too much help", "אני מתפוצצת", "went to the bahai gardens", "my grandma asked if ur jewish {lol}",
                "ok she loves u now"],
        "daniel": [
            "Please tell your mother that I am still thinking about her kubbeh from the last time. It was wonderful.",
            "I would love to come next time, as long as your father promises not to talk about politics all evening.",
            "The train schedule on Friday is quite limited, so make sure you catch the one before three o'clock.",
            "Say hello to your grandmother from me, and tell her I am still practising my Hebrew, slowly.",
            "If your mother packed food for a week, then I expect you to share at least some of it with me.",
            "How is your father's back? Last time you said he was still climbing ladders in the garden, against all "
            "advice.",
            "I looked at the photos from the Carmel. The view is wonderful, and the cat in the corner looks "
            "suspiciously like Pita.",
            "Please remind your mother that I still have her casserole dish. I will bring it back the next time I "
            "come.",
        ],
        "noa_close": ["ok going to eat {e}", "ttyl {e}", "love u bye", "נדבר מחר"],
        "daniel_close": [
            "Enjoy the weekend with your family. Text me when you are on the train back on Saturday evening.",
            "Have a good time, and do not let your father convince you to move back to Haifa.",
        ],
    },
    "dinner": {
        "noa_open": ["dinner tonight?", "im starving {e}", "מה אוכלים", "sushi or hummus", "בא לי {dish}",
                     "u cooking tonight? {e}"],
        "daniel_open": [
            "I was thinking of cooking pasta tonight. Would you like to come over around eight?",
            "What would you like for dinner? I can book a table somewhere, or we can order to my place.",
            "I have finally tried the recipe your mother sent me, and I think it went rather well this time.",
        ],
        "noa": ["{dish}!!!", "ok {dish} it is", "i'll bring wine {e}", "im sooo hungry", "the one in jaffa?",
                "we ate there last week {lol}", "ur pasta is the best", "can pita come {lol}", "מזמינה עכשיו",
                "8 is good", "make the lemon one", "no cilantro pls {e}", "i'll bring dessert", "איזה רעב",
                "ok but garlic bread", "order for me pls"],
        "daniel": [
            "I will make the lemon pasta then, since it is the only dish I can cook without a recipe.",
            "The hummus place in Jaffa closes at three, so if we want it we will have to go on Friday.",
            "I booked a table for eight o'clock. They said the kitchen is busy, so we should not be late.",
            "I am going to the supermarket now. Do you need anything, apart from the usual chocolate?",
            "Please do not bring the red wine from last time. I still have a headache when I think of it.",
            "I ordered {dish}. The app says forty minutes, which means at least an hour in reality.",
            "I burnt the onions while I was reading your messages, so dinner will be slightly more rustic than "
            "planned.",
            "The place on Levinsky has a new menu. The waiter recommended the {dish}, and I trust waiters too much.",
            "I have bought far too much food again, so please come hungry and take some of it home with you.",
        ],
        "noa_close": ["ok see u at 8 {e}", "coming {e}", "yalla", "בדרך"],
        "daniel_close": [
            "Perfect. I will start cooking at half past seven, so please try to be on time for once.",
            "Good, it is settled then. I will see you later this evening.",
        ],
    },
    "north": {
        "noa_open": ["we need to plan the north trip {e}", "צפון!!!", "i found a zimmer {e}", "when r we going north",
                     "did u book the zimmer"],
        "daniel_open": [
            "I have started a list for the trip up north. Do you prefer the Galilee or the Golan this time?",
            "I looked at the weather for the weekend in the Galilee. It should be dry, but cold at night.",
        ],
        "noa": ["golan!!", "nahal amud {e}", "the zimmer has a jacuzzi {lol}", "i'll make a playlist",
                "we need snacks", "<Media omitted>", "look at this view", "can we take ur car", "ugh my scooter {lol}",
                "i want the hike with the waterfall", "ok but not at 6am", "מה עם האוהל", "im so excited {e}",
                "is it cold there?", "take the big jacket"],
        "daniel": [
            "I would like to leave on Thursday at seven in the morning, to avoid the traffic out of Tel Aviv.",
            "The zimmer near Rosh Pina has a free room for the weekend. It is a little expensive, but it looks lovely.",
            "Things we should bring:\n- sleeping bags\n- the small gas stove\n- six litres of water\n- a first aid kit",
            "I checked the trail at Nahal Amud. It is about four hours, and the last part is quite steep.",
            "We can take my car, as long as you are in charge of the music and I am in charge of the map.",
            "My mother lent us her tent, and she asked me to remind you that we must return it dry this time.",
            "The forecast for the Golan says there might be a little rain on Saturday, so let us pack the rain "
            "jackets too.",
            "I downloaded the offline maps, because last time we lost the signal in the middle of the trail.",
            "The owner of the zimmer says there is a very good breakfast, with local cheese and fresh bread from the "
            "village.",
        ],
        "noa_close": ["ok book it {e}", "yalla!!", "best trip ever already", "סגור"],
        "daniel_close": [
            "I will book it tonight and send you the details. This is going to be a very good weekend.",
            "Then it is decided. I will make a proper list, and you will ignore it, as usual.",
        ],
    },
    "concert": {
        "noa_open": ["jasmine riot are playing at the barby!!! {e}", "tickets!!!", "did u see the barby lineup",
                     "we're going to the concert right??"],
        "daniel_open": [
            "Jasmine Riot have announced a concert at the Barby in June. Should I try to buy tickets tomorrow morning?",
            "The tickets for the concert went on sale this morning. I managed to get two before they sold out.",
        ],
        "noa": ["yesss {e}", "i need to learn the new album", "what do i wear {lol}", "standing tickets right?",
                "ur the best {e}", "<Media omitted>", "they sound so good live", "im gonna cry {e}",
                "ok im screaming", "the opening act is weird {lol}", "אין עליך", "we go early", "free the date!!"],
        "daniel": [
            "The doors open at nine, but the band will probably not start before half past ten, as always.",
            "I bought standing tickets, since you will not sit down anyway once they play the first song.",
            "I have been listening to the new album on the way to work, and I have to admit it is very good.",
            "If we want to get close to the stage, we should arrive early, and eat something before we go.",
            "I read that they might play the whole first album, which would make you very happy and me reasonably "
            "happy.",
            "The last bus home is at half past midnight, so either we leave early or we take a taxi, which I expect "
            "we will.",
        ],
        "noa_close": ["best day ever {e}", "ok bye im listening to them now", "love uuu", "🎶🎶"],
        "daniel_close": [
            "I will put it in the calendar now, so neither of us can forget it or book something else.",
            "Good. I will forward you the tickets tonight, please do not lose them this time.",
        ],
    },
    "pita": {
        "noa_open": ["pita did something again {e}", "<Media omitted>", "look at pita", "פיתה!!!",
                     "ur cat is judging me {lol}", "pita says hi {e}"],
        "daniel_open": [
            "Pita has knocked my coffee off the table again, and now she is looking at me as if it were my fault.",
            "Could you check on Pita tomorrow afternoon? I will be in Jerusalem all day for the site visit.",
            "Pita slept on my keyboard for the entire morning and sent a very strange email to my manager.",
        ],
        "noa": ["{lol} she's a criminal", "<Media omitted>", "she ate the plant again {e}", "מלכה", "queen {e}",
                "she hates u {lol}", "she loves me more", "pita is sitting on my bag", "she's so fat {e}",
                "fed her already", "she knocked my glass {e}", "the vet said she's fine {e}", "פיתה שמנה",
                "she's on the laptop again", "look at her face"],
        "daniel": [
            "She is not fat, she is simply well fed, and I will ask you not to say that in front of her.",
            "The vet says she is perfectly healthy, but we should stop giving her pieces of cheese.",
            "I came home and she had opened the cupboard and eaten half a bag of her own food.",
            "She has decided that my laptop is the warmest place in the flat, and I cannot really argue with her.",
            "Please do not give her tuna again. She refused her own food for two days after the last time.",
            "She has started sleeping in the laundry basket, on the clean clothes, of course, never on the dirty ones.",
            "I bought her a new toy mouse for forty shekels, and she has been playing with the receipt for an hour.",
            "The neighbour says Pita sits on the windowsill and stares at her every morning. I did not know what to "
            "say.",
        ],
        "noa_close": ["kiss her for me {e}", "bye pita", "ok she's asleep {lol}", "פיתה ❤️"],
        "daniel_close": [
            "I will tell her you said hello, although I doubt she will care very much.",
            "She is asleep on the sofa now, which is the only time the flat is truly quiet.",
        ],
    },
    "scooter": {
        "noa_open": ["the scooter died again {e}", "הקורקינט מת", "guess who's walking {lol}",
                     "scooter update: dead", "avi says 2 more days {e}"],
        "daniel_open": [
            "How is the scooter doing? Did Avi manage to fix the battery, or is it still in his shop?",
            "I saw a very good second-hand bicycle on Facebook today. Please consider it before you fix the scooter "
            "again.",
        ],
        "noa": ["the battery again {e}", "flat tire {lol}", "avi is my best friend now", "walking to work {e}",
                "im not buying a bike", "its a vintage scooter", "אבי אמר עוד יומיים", "it made a weird noise",
                "it died in the middle of ibn gabirol {lol}", "im so sweaty", "pay me a taxi {lol}",
                "no bikes no", "it works!!! {e}", "ok it stopped again"],
        "daniel": [
            "With respect, this is the fourth time this year. At some point the repairs will cost more than a new one.",
            "I can pick you up on the way, but you will have to be ready at eight, not at a quarter past.",
            "Avi told me last time that the battery was old. I suspect he will tell you the same thing again.",
            "A bicycle has no battery, which means it cannot die in the middle of Ibn Gabirol. Just saying.",
            "I am sorry, but I am laughing at the idea of you pushing that scooter all the way to the shop.",
            "I have calculated that you have spent more on repairs this year than the scooter cost in the first place.",
            "If it dies again on the way to work, send me your location and I will come and rescue you, as usual.",
        ],
        "noa_close": ["rip scooter {e}", "ok picking it up tomorrow", "אל תגיד כלום", "it will live {lol}"],
        "daniel_close": [
            "Good luck with it. I will not say anything else about bicycles, at least until next week.",
            "Let me know when it is fixed, and I will stop worrying about you walking home at night.",
        ],
    },
    "work": {
        "noa_open": ["this client is killing me {e}", "deadline tomorrow help", "עבודה עבודה עבודה",
                     "they want the logo bigger again {lol}", "how's ur day"],
        "daniel_open": [
            "How did the presentation go? I was thinking about you during my meeting, which was very long and boring.",
            "My manager has moved the deadline to Thursday, so I will probably work late every night this week.",
        ],
        "noa": ["they want it bigger {lol}", "and more blue", "im so tired {e}", "they loved it!!!", "ok it went ok",
                "meeting in 5", "i hate figma today", "כל היום ישיבות", "need coffee", "my boss said wow {e}",
                "ok back to work", "they changed everything again"],
        "daniel": [
            "That is wonderful news. I knew they would like it, because you worked so hard on it.",
            "If the client wants the logo bigger again, perhaps you should send them the first version and see.",
            "I have had six meetings today, and I still do not understand what the project is supposed to do.",
            "Try to take a short walk after lunch, it always helps me when I am stuck on something.",
            "I will be at the office until at least eight, so please do not wait for me for dinner.",
            "The client called me three times today to ask the same question, and I answered it patiently three times.",
            "My team finally finished the report. It is forty pages long and I suspect nobody will read beyond page "
            "two.",
        ],
        "noa_close": ["ok back to work {e}", "ttyl", "נדבר בערב", "bye {e}"],
        "daniel_close": [
            "Good luck with the rest of the day. Call me when you finish, whatever time it is.",
            "I have to go back to my meeting now. We will talk properly this evening.",
        ],
    },
    "weather": {
        "noa_open": ["{weather}", "did u see outside {e}", "מה זה המזג אוויר הזה"],
        "daniel_open": [
            "Did you see the forecast? They are saying {weather_d}",
            "I just got completely soaked on the way from the bus stop, so I hope you are staying inside today.",
        ],
        "noa": ["{weather}", "im not leaving the house", "<Media omitted>", "my hair {e}",
                "the ayalon is a river {lol}",
                "i love it actually", "pita is scared of the thunder", "שרב", "חורף סוף סוף", "sandals season {e}"],
        "daniel": [
            "I have been saying for weeks that we need a proper umbrella, and now I am finally proven right.",
            "The Ayalon is flooded again, so I am working from home today, which suits me perfectly.",
            "It is forty degrees and my air conditioner has decided to make a new and very worrying noise.",
            "I have closed all the shutters and I am lying on the floor, which is the coolest place in the flat.",
            "The weather app says it will improve by the weekend, but the weather app has lied to me before.",
            "I saw a man on Dizengoff walking his dog with an umbrella over the dog. I think that says everything.",
        ],
        "noa_close": ["stay dry {e}", "stay cool {e}", "ok bye", "שמור על עצמך"],
        "daniel_close": ["Stay inside and stay dry. I will call you in the evening.",
                         "Drink plenty of water and stay away from the sun until it cools down a little."],
    },
    "shows": {
        "noa_open": ["did u watch {show}", "ok i finished {show} {e}", "new episode tonight!!",
                     "https://www.instagram.com/reel/C9pTqA2xLmN/", "look at this {lol}"],
        "daniel_open": [
            "I watched two more episodes of {show} last night, and I think I finally understand why you like it.",
            "I have just seen the video you sent me this morning. I cannot believe that cat opened the fridge.",
        ],
        "noa": ["no spoilers!!!", "the ending {e}", "i cried {e}", "ok im obsessed", "watch it with me",
                "the main guy is so annoying {lol}", "season 2 when", "אני בפרק 5", "https://youtu.be/dQ7xLmT8pQa",
                "look at this https://www.instagram.com/p/C8kLmQx4Np7/ {lol}"],
        "daniel": [
            "I will not spoil it, but I will say that the last episode surprised me more than I expected.",
            "We could watch the next episode together on Friday, if you promise not to talk through all of it.",
            "I still think the second season is better, but I am prepared to discuss it over dinner.",
            "I fell asleep in the middle of the episode, so you will have to tell me what happened without spoiling "
            "the end.",
            "My brother recommended a new series, but he also recommended that terrible film last month, so I am "
            "careful.",
        ],
        "noa_close": ["ok watching now {e}", "bye {lol}", "tonight!!", "לילה טוב"],
        "daniel_close": ["Good night. I am going to sleep before I start another episode.",
                         "Enjoy it, and we will talk about it tomorrow."],
    },
}

DISHES = ["sushi", "hummus", "pizza", "shakshuka", "ramen", "sabich", "pad thai"]
SHOWS = ["the bear", "shtisel", "fauda", "severance", "the office"]
DAYS = ["tomorrow", "on friday", "on sunday", "this evening"]
TIMES = ["10", "10:30", "11", "4", "5", "9"]
WEATHER_WINTER = (["its pouring {e}", "גשם!!!", "the rain omg {e}", "its so cold {e}", "thunder!!"],
                  "heavy rain all day tomorrow, with thunderstorms in the evening.")
WEATHER_SUMMER = (["its 38 degrees {e}", "im melting {e}", "שרב", "the heat {e}", "hamsin again ugh"],
                  "a heatwave until Sunday, with thirty-eight degrees in Tel Aviv.")


def topic_weights(day: date) -> dict[str, float]:
    """How likely each topic is on this day: the seasons and the plans move over the six months."""
    m = day.month
    w = {"cafe": 3, "beach": 0.3 * m, "haifa": 1.5 + (1.5 if day.weekday() in (3, 4) else 0), "dinner": 3,
         "north": 3 if m in (4, 5) else 0.4, "concert": 2.5 if m in (5, 6) else (0.5 if m >= 3 else 0),
         "pita": 2.5, "scooter": 2, "work": 2.5, "weather": 2 if m in (1, 2, 6) else 0.4, "shows": 1.5}
    return {k: float(v) for k, v in w.items()}


class Writer:
    """Builds the export line by line with a running clock."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.lines: list[str] = []
        self.clock = datetime(START.year, START.month, START.day, 9, 0)

    def stamp(self) -> str:
        return self.clock.strftime("%d/%m/%Y, %H:%M")

    def system(self, text: str) -> None:
        self.lines.append(f"{self.stamp()} - {text}")

    def say(self, sender: str, text: str) -> None:
        self.lines.append(f"{self.stamp()} - {sender}: {text}")

    def wait(self, lo: int, hi: int) -> None:
        self.clock += timedelta(minutes=self.rng.randint(lo, hi))


def slots(rng: random.Random) -> dict[str, str]:
    """One conversation's choices (the dish, the show, ...), so both people talk about the same one."""
    return {"day": rng.choice(DAYS), "time": rng.choice(TIMES), "dish": rng.choice(DISHES), "show": rng.choice(SHOWS)}


def fill(template: str, rng: random.Random, day: date, s: dict[str, str]) -> str:
    """Fill a template's slots with this conversation's choices and a fresh laugh or emoji each time."""
    winter = day.month in (1, 2, 3)
    weather = WEATHER_WINTER if winter else WEATHER_SUMMER
    text = template
    if "{weather}" in text:
        text = text.replace("{weather}", rng.choice(weather[0]))
    text = text.replace("{weather_d}", weather[1])
    while "{lol}" in text:
        text = text.replace("{lol}", rng.choice(LAUGH), 1)
    while "{e}" in text:
        text = text.replace("{e}", rng.choice(EMOJI) * rng.choice((1, 1, 1, 2, 3)), 1)
    return (text.replace("{day}", s["day"]).replace("{time}", s["time"]).replace("{dish}", s["dish"])
            .replace("{show}", s["show"]))


def noa_decorate(text: str, rng: random.Random) -> str:
    """Noa's habits on top of a line: a trailing emoji or laugh now and then."""
    if text == "<Media omitted>" or text.startswith("http"):
        return text
    r = rng.random()
    if r < 0.22 and not any(e in text for e in EMOJI):
        text = f"{text} {rng.choice(EMOJI)}"
    elif r < 0.30:
        text = f"{text} {rng.choice(LAUGH)}"
    return text


def pick(pool: list[str], used: set[str], rng: random.Random, fallback: list[str]) -> str:
    """A line from the pool not yet used in this conversation; when all are used, small talk from `fallback`."""
    fresh = [p for p in pool if p not in used] or [p for p in fallback if p not in used] or pool
    choice = rng.choice(fresh)
    used.add(choice)
    return choice


def conversation(w: Writer, topic: str, day: date, extra: list[tuple[str, str]]) -> None:
    """Write one conversation of 8-20 messages about `topic`; `extra` lines are slipped into Noa's turns."""
    rng = w.rng
    t = TOPICS[topic]
    target = rng.randint(8, 20)
    speaker = NOA if rng.random() < 0.55 else DANIEL
    used: set[str] = set()
    s = slots(rng)
    count = 0
    first = True
    while count < target:
        closing = count >= target - 3
        if speaker == NOA:
            burst = min(rng.choices((1, 2, 3, 4, 5), weights=(2, 4, 4, 2, 1))[0], max(1, target - count))
            for i in range(burst):
                if i == 0:
                    pool = t["noa_open"] if first else (t["noa_close"] if closing else t["noa"])
                else:
                    pool = NOA_GENERIC if rng.random() < 0.35 else t["noa"]
                line = noa_decorate(fill(pick(pool, used, rng, NOA_GENERIC), rng, day, s), rng)
                if extra and i == 1:
                    line = extra.pop(0)[1]
                w.say(NOA, line)
                count += 1
                w.wait(0, 1)
            w.wait(1, 8)
            speaker = DANIEL
        else:
            pool = t["daniel_open"] if first else (t["daniel_close"] if closing else
                                                    (DANIEL_GENERIC if rng.random() < 0.15 else t["daniel"]))
            w.say(DANIEL, fill(pick(pool, used, rng, DANIEL_GENERIC), rng, day, s))
            count += 1
            w.wait(2, 14)
            speaker = NOA
        first = False
    for _, line in extra:  # a conversation with no burst of two still gets its planted line, at its end
        w.say(NOA, line)
        w.wait(0, 1)


# Conversation number -> Noa lines to slip in: the planted personal data, special entries and their quirks.
SPECIALS = {
    12: [("noa", "This message was deleted")],
    31: [("noa", f"my new number btw {PLANTED_PII['phone_il'][0]} 📱")],
    58: [("noa", f"i wrote it on the form as {PLANTED_PII['phone_il'][1]} haha")],
    77: [("noa", f"if u cant reach me in london call maya's uk number {PLANTED_PII['phone_uk'][0]}")],
    104: [("noa", f"send the tickets to {PLANTED_PII['email'][0]} {EMOJI[9]}")],
    150: [("noa", f"{PLANTED_PII['iban'][0]} thats my iban for the zimmer money 🙏")],
    171: [("noa", "This message was deleted")],
    199: [("noa", f"my id for the insurance form is {PLANTED_PII['il_id'][0]}")],
    222: [("noa", "ok\nso\nhear me out\nwe get a second cat 🙈")],
    240: [("noa", "wait i spelled it wrong <This message was edited>")],
    265: [("noa", "the place is this one https://www.booking.com/hotel/il/zimmer-rosh-pina.html 😍")],
}


def generate(seed: int = SEED) -> str:
    """The whole export as text (ends with a newline)."""
    rng = random.Random(seed)
    w = Writer(rng)
    w.system(ENCRYPTION)
    n_conv = 0
    day = START
    while day <= END:
        per_day = rng.choices((0, 1, 2, 3), weights=(5, 30, 40, 25))[0]
        w.clock = max(w.clock, datetime(day.year, day.month, day.day, 7, 30))
        for _ in range(per_day):
            # hours of silence between conversations: the one-hour splitter must see each one separately
            w.clock += timedelta(minutes=rng.randint(90, 300))
            if w.clock.date() != day or w.clock.hour >= 23:
                break
            weights = topic_weights(day)
            topic = rng.choices(list(weights), weights=list(weights.values()))[0]
            extra = list(SPECIALS.get(n_conv, []))
            conversation(w, topic, day, extra)
            n_conv += 1
            if n_conv == 32:  # right after the conversation where Noa gives her new number
                w.system("Noa changed their phone number to a new number. Tap to message or add the new number.")
            if n_conv == 90:
                w.wait(60, 90)
                w.system("Your security code with Noa changed. Tap to learn more.")
            if n_conv == 160:
                w.say(DANIEL, "The owner of the zimmer is called Yossi, and his number is "
                              f"{PLANTED_PII['phone_il_landline'][0]}, in case we arrive after ten.")
            if n_conv == 180:
                w.say(DANIEL, "You deleted this message")
            if n_conv == 210:
                w.say(DANIEL, "Sorry, I meant Thursday, not Tuesday. <This message was edited>")
            if n_conv == 250:
                w.say(DANIEL, "Here is the menu, the mushroom risotto is the one I told you about: "
                              "https://nechama-cafe.example/menu")
        day += timedelta(days=1)
        w.clock = max(w.clock, datetime(day.year, day.month, day.day, 0, 0))
    return "\n".join(w.lines) + "\n"


def main() -> None:
    """Write the sample chat (default: next to this script)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    text = generate(args.seed)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(text.encode("utf-8"))
    tmp.replace(args.out)
    print(f"wrote {args.out} ({text.count(chr(10))} lines)")


if __name__ == "__main__":
    main()
